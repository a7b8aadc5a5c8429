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
