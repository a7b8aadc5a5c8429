"""Import path of the reference library: ``from pytorch_grad_cam.score_cam import ScoreCAM``."""
from .perturbation import ScoreCAM

__all__ = ["ScoreCAM"]
