"""The reference library's import path ``pytorch_grad_cam.feature_factorization.deep_feature_factorization``.

The code lives in ``pytorch_grad_cam.methods.factorization``.
"""

from ..methods.factorization import (
    DeepFeatureFactorization as DeepFeatureFactorization,
)
from ..methods.factorization import (
    create_labels_legend as create_labels_legend,
)
from ..methods.factorization import (
    dff as dff,
)
from ..methods.factorization import (
    run_dff_on_image as run_dff_on_image,
)
