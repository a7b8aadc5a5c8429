"""Run the pytorch_grad_cam command line from a source checkout: python cam.py --help"""

from pytorch_grad_cam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
