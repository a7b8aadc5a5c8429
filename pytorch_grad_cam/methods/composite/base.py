"""What FinerCAM, RefineCAM and SESS share: a method computed through an instance of a base method.

Each takes a ``base_method`` (a :class:`BaseCAM` subclass or its registry name), builds it on the same
model, layers, transform and device, and changes one step of it through the base method's public API and
:class:`~pytorch_grad_cam.base_cam.CallOptions`: FinerCAM the targets, RefineCAM the fusion of the target
layers, SESS the input (multi-scale sliding windows). They are :class:`BaseCAM` objects themselves (same
call, same ``aug_smooth``, same guarantees on the user's model).
"""

from __future__ import annotations

from typing import Any, ClassVar, Union

import numpy as np
import torch
from torch import nn

from ..._engine.checks import check_batch_size, check_int
from ...base_cam import UNSET, BaseCAM
from ...registry import get_method
from ..gradient import GradCAM

BaseMethod = Union[str, type[BaseCAM]]

#: The capability attributes a composite takes over from its base method.
_CAPABILITIES = (
    "uses_gradients",
    "records_prefix",
    "class_specific",
    "deterministic",
    "uses_target_layers",
    "needs_nonnegative_activations",
)


def base_class(base_method: Any) -> type[BaseCAM]:
    """The plain CAM class named by ``base_method`` (a class, or its registry name)."""
    if isinstance(base_method, str):
        base_method = get_method(base_method)
    if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
        raise TypeError(
            f"base_method must be a CAM class (e.g. GradCAM) or its registry name (e.g. "
            f"'gradcam'), got {base_method!r}"
        )
    if issubclass(base_method, CompositeCAM):
        raise TypeError(f"base_method must be a plain CAM method, not the composite {base_method.__name__}")
    return base_method


def check_int_list(value: Any, name: str) -> list:
    """``value`` as a list of Python ints (each checked with its index in the message)."""
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}") from None
    return [check_int(item, f"{name}[{i}]") for i, item in enumerate(items)]


class CompositeCAM(BaseCAM):
    """A method computed through an instance of a base method (``self.base_cam``).

    The composite validates the common arguments itself (``BaseCAM.__init__``), then builds the base
    method on the same model, layers, transform and device; extra keyword arguments go to the base
    method (e.g. ``seed`` for RandomCAM).
    """

    default_base: ClassVar[type[BaseCAM]] = GradCAM
    #: Whether the composite's ``batch_size`` is the base method's (False: the composite's own, SESS).
    shares_batch_size: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Any = None,
        reshape_transform: Any = None,
        base_method: BaseMethod | None = None,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
        device: Any = None,
        tta_transforms: Any = None,
        batch_size: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        """Check the common arguments as :class:`BaseCAM`, then build the base method on them."""
        base_cls = base_class(self.default_base if base_method is None else base_method)
        own_batch = None if self.shares_batch_size else batch_size
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            target_layer=target_layer,
            use_cuda=use_cuda,
            device=device,
            tta_transforms=tta_transforms,
            batch_size=own_batch,
        )
        if self.shares_batch_size and batch_size is not None:
            base_kwargs["batch_size"] = batch_size
        self.base_method = base_cls
        #: The base method's own arguments, for composites that build more instances of it (RefineCAM).
        self.base_kwargs = dict(base_kwargs, tta_transforms=tta_transforms)
        self.base_cam = base_cls(
            model,
            self.target_layers,
            self.reshape_transform,
            device=self.device,
            tta_transforms=tta_transforms,
            **base_kwargs,
        )
        for attribute in _CAPABILITIES:
            setattr(self, attribute, getattr(base_cls, attribute))
        if self.shares_batch_size:
            self.perturbation = base_cls.perturbation

    @property
    def batch_size(self) -> int | None:
        """Perturbed inputs per forward pass: the base method's (FinerCAM, RefineCAM) or patches (SESS).

        None (a perturbation base method's default): sized at each call to the device's free memory.
        """
        if self.shares_batch_size and "base_cam" in self.__dict__:
            return self.base_cam.batch_size
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._batch_size = self.default_batch_size if value is None else check_batch_size(value)
        if self.shares_batch_size and "base_cam" in self.__dict__:
            self.base_cam.batch_size = value

    # The reference library's argument order (eigen_smooth third), not BaseCAM's: hence the override.
    def __call__(  # type: ignore[override]
        self,
        input_tensor: torch.Tensor,
        targets: Any = None,
        eigen_smooth: bool = False,
        *,
        aug_smooth: bool = False,
        target_category: Any = UNSET,
    ) -> np.ndarray:
        """Maps ``(B, *spatial)`` float32 in ``[0, 1]``.

        The reference library's argument order: ``(input_tensor, targets, eigen_smooth)``; ``aug_smooth`` is
        keyword-only.
        """
        self.check_call_order(aug_smooth, eigen_smooth)
        return super().__call__(
            input_tensor, targets, aug_smooth, eigen_smooth, target_category=target_category
        )

    def forward(
        self, input_tensor: torch.Tensor, targets: Any = None, eigen_smooth: bool = False
    ) -> np.ndarray:
        """The reference library's ``forward``: the call without augmentation smoothing."""
        return self(input_tensor, targets, eigen_smooth)

    def check_call_order(self, aug_smooth: Any, eigen_smooth: Any) -> tuple[bool, bool]:
        """Both flags as bools.

        A non-bool (usually a call in another library's argument order) is a TypeError saying this method's
        order.
        """
        for name, value in (("aug_smooth", aug_smooth), ("eigen_smooth", eigen_smooth)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(
                    f"{name} must be a bool, got {type(value).__name__} (note: the reference "
                    f"library's {type(self).__name__} call is (input_tensor, targets, "
                    "eigen_smooth, ...); aug_smooth is keyword-only here)"
                )
        return bool(aug_smooth), bool(eigen_smooth)
