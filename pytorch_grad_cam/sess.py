"""The reference library's import path ``pytorch_grad_cam.sess``.

The code lives in ``pytorch_grad_cam.methods.composite.sess``.
"""

from .methods.composite.sess import SESS as SESS
