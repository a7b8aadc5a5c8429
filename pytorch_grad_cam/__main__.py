"""``python -m pytorch_grad_cam``: the command line, the same as the ``pytorch-grad-cam`` script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
