"""Method name -> class, filled as the method classes are defined: a class that sets ``name`` registers.

Three kinds, one table each: ``METHODS`` (CAMs: ``(B, *spatial)`` maps, :class:`BaseCAM` subclasses),
``PIXEL_METHODS`` (pixel-resolution gradients: guided backpropagation, Guided Grad-CAM) and
``FACTORIZATION_METHODS`` (Deep Feature Factorization: concepts and one heatmap per concept). The CLI's
``--method`` choices and the generic test suites read these tables, so a new method is everywhere as
soon as its class is defined. This module imports nothing from the package: no import cycle.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: Map methods: ``cls(model, target_layers=[...])(x, targets)`` -> ``(B, *spatial)`` maps in [0, 1].
METHODS: dict[str, Any] = {}
#: Pixel-resolution gradient methods, not CAMs: ``cls(model, ...)(x, targets)`` returns gradients with
#: the input's channels, ``(H, W, C)`` for one image, ``(B, H, W, C)`` for more.
PIXEL_METHODS: dict[str, Any] = {}
#: Methods that are not CAMs (no targets, no single map): Deep Feature Factorization returns concepts and
#: one heatmap per concept; called as ``cls(model, target_layer)(x, n_components)``.
FACTORIZATION_METHODS: dict[str, Any] = {}

#: kind -> its table.
KINDS: dict[str, dict[str, Any]] = {
    "map": METHODS,
    "pixel": PIXEL_METHODS,
    "factorization": FACTORIZATION_METHODS,
}


class Registered:
    """Base of every method class.

    A subclass whose own body sets ``name`` is registered under it, in the table of its ``kind`` (``"map"``,
    ``"pixel"`` or ``"factorization"``); subclasses that do not set a name of their own (a user's variant of
    GradCAM, say) are not.
    """

    #: The registry name, lower case (e.g. ``"gradcam"``); also the CLI's ``--method`` value.
    name: ClassVar[str]
    #: Which table the class is registered in.
    kind: ClassVar[str] = "map"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register a subclass whose own body sets ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            register(cls)


def register(cls: Any) -> Any:
    """Put ``cls`` in the table of its ``kind`` under ``cls.name``.

    A name taken by another class is a ValueError.
    """
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {tuple(KINDS)}, got {cls.kind!r}")
    name = cls.name
    for table in KINDS.values():
        taken = table.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(
                f"the method name {name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
                f"{taken.__module__}.{taken.__qualname__}"
            )
    KINDS[cls.kind][name] = cls
    return cls


def get_method(name: str) -> Any:
    """The map method registered under ``name`` (e.g. ``"gradcam"``), case-insensitive."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a method name (str), got {type(name).__name__} {name!r}")
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {sorted(METHODS)}") from None


def kind_of(name: str) -> str:
    """The kind (``"map"``, ``"pixel"``, ``"factorization"``) of the method registered as ``name``."""
    for kind, table in KINDS.items():
        if name in table:
            return kind
    known = sorted(n for table in KINDS.values() for n in table)
    raise ValueError(f"unknown method {name!r}; choose one of {known}")
