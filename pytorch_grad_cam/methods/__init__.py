"""The CAM methods, one module per family; each class registers itself (see ``pytorch_grad_cam.registry``).

The families are imported here in the order the registry (and so the CLI's ``--methods all``) lists them:
the gradient methods first, then projections, perturbations, activation CAMs, FullGrad, the composites,
and the methods that are not CAMs (guided backpropagation, Deep Feature Factorization).
"""

# isort: off
from . import gradient as gradient
from . import projection as projection
from . import perturbation as perturbation
from . import activation as activation
from . import fullgrad as fullgrad
from . import composite as composite
from . import guided as guided
from . import factorization as factorization
# isort: on
