"""The CLI's models: checkpoints that do not fit (short messages, exit 2) and class names matched strictly."""

from pathlib import Path

import pytest
import torch
import torchvision

from pytorch_grad_cam.cli import main

REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "examples" / "cat.jpg"

needs_pretrained = pytest.mark.usefixtures("pretrained_packages")


def _run(tmp_path, *args: str) -> int:
    return main([str(CAT), *args, "--output-dir", str(tmp_path / "out")])


# ------------------------------------------------------------------------------------------ checkpoints
def test_a_checkpoint_of_another_architecture_is_a_short_exit_2(tmp_path, capsys):
    """resnet18's weights for --model resnet34: the counts of missing and unexpected keys and the first five
    names, not torch's list of every key (4.7 KB)."""
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    assert _run(tmp_path, "--model", "resnet34", "--checkpoint", str(path)) == 2
    err = capsys.readouterr().err
    ours = torchvision.models.resnet18(num_classes=3).state_dict()
    missing = [k for k in torchvision.models.resnet34(num_classes=3).state_dict() if k not in ours]
    assert len(missing) > 5
    names = ", ".join(missing[:5])
    assert (
        f"error: --checkpoint {str(path)!r} does not fit --model resnet34: {len(missing)} of the model's "
        f"keys are missing from it ({names}, and {len(missing) - 5} more)"
    ) in err, err
    assert "Missing key(s)" not in err
    assert len(err) < 600
    assert not (tmp_path / "out").exists()


def test_unexpected_keys_and_wrong_shapes_are_counted_too(tmp_path, capsys):
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    assert _run(tmp_path, "--model", "resnet18", "--checkpoint", str(path)) == 2
    err = capsys.readouterr().err
    assert (
        "1 key is not in the model (extra.weight); 1 key has the wrong shape (conv1.weight: (64, 1, 7, 7) "
        "in the checkpoint, (64, 3, 7, 7) in the model)"
    ) in err, err


def test_a_whole_pickled_model_is_a_short_exit_2_that_says_how_to_save_weights(tmp_path, capsys):
    """torch.save(model) is refused (unpickling runs code); the message says to save model.state_dict(),
    not torch's advice to set weights_only=False, which the CLI offers no way to do."""
    path = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(num_classes=3), path)
    assert _run(tmp_path, "--model", "resnet18", "--checkpoint", str(path)) == 2
    err = capsys.readouterr().err
    assert (
        f"error: --checkpoint {str(path)!r} holds a pickled object (torchvision.models.resnet.ResNet), not a "
        "state dict: a whole model saved with torch.save(model)? Loading it would run code from the file; "
        "save its weights instead, torch.save(model.state_dict(), 'weights.pt'), and give --checkpoint "
        "weights.pt"
    ) in err, err
    assert "weights_only" not in err
    assert len(err) < 600


def test_a_file_that_is_not_a_checkpoint_is_exit_2(tmp_path, capsys):
    (tmp_path / "junk.pt").write_text("junk")
    assert _run(tmp_path, "--model", "resnet18", "--checkpoint", str(tmp_path / "junk.pt")) == 2
    assert "is not a torch state dict (" in capsys.readouterr().err
    assert _run(tmp_path, "--model", "resnet18", "--checkpoint", str(tmp_path / "none.pt")) == 2
    assert f"--checkpoint {str(tmp_path / 'none.pt')!r}: no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ class names
@needs_pretrained
@pytest.mark.parametrize("name", ["tabby catt", "tabby dog", "cat", "tabby cat"])
def test_a_class_name_that_is_not_exact_is_exit_2_with_close_names(tmp_path, capsys, name):
    """Loose matching took 'tabby catt' and 'tabby dog' as 281 (tabby) without a word; the ImageNet name is
    'tabby', so only that (any case) is 281."""
    import difflib

    from pytorch_grad_cam.pretrained import IMAGENET_CLASSES

    assert _run(tmp_path, "--target-category", name) == 2
    err = capsys.readouterr().err
    close = difflib.get_close_matches(name, [c.lower() for c in IMAGENET_CLASSES], n=5, cutoff=0.6)
    lower = [c.lower() for c in IMAGENET_CLASSES]
    shown = ", ".join(f"{IMAGENET_CLASSES[lower.index(c)]!r} ({lower.index(c)})" for c in close)
    assert f"error: --target-category {name!r}: no class of that name; did you mean {shown}?" in err, err
    assert 1 <= len(close) <= 5
    assert not (tmp_path / "out").exists()


@needs_pretrained
def test_class_names_match_whole_in_any_case(tmp_path, capsys):
    assert _run(tmp_path, "--target-category", "TABBY", " Egyptian Cat ") == 0
    out = capsys.readouterr().out
    assert "explained class: 281 (tabby)" in out
    assert "explained class: 285 (Egyptian cat)" in out


@needs_pretrained
def test_a_name_of_two_classes_is_ambiguous(tmp_path, capsys):
    assert _run(tmp_path, "--target-category", "cardigan") == 2  # the corgi (264) and the sweater (474)
    assert (
        "error: --target-category 'cardigan' is ambiguous: 264 (Cardigan), 474 (cardigan); give the index"
        in capsys.readouterr().err
    )


def test_a_comma_separated_synonym_of_a_label_matches_exactly():
    """Labels in the WordNet style ('tabby, tabby cat') match any whole synonym, nothing less."""
    from pytorch_grad_cam.cli.models import CliError, LoadedModel, resolve_categories

    loaded = LoadedModel(torch.nn.Identity(), (0.5,), (0.5,), 8, ["tench, Tinca tinca", "tabby, tabby cat"])
    assert resolve_categories(["Tabby Cat", "tinca tinca", "tabby", "0"], loaded, 2) == [1, 0, 1, 0]
    with pytest.raises(CliError) as exc:
        resolve_categories(["tabby ca"], loaded, 2)
    assert exc.value.code == 2
    assert str(exc.value) == (
        "--target-category 'tabby ca': no class of that name; did you mean 'tabby, tabby cat' (1)?"
    )
