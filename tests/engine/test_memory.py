"""The default batch size of the perturbation methods: a share of the device's free memory, bounded."""

import pytest
import torch

from pytorch_grad_cam import ISCAM, ScoreCAM
from pytorch_grad_cam._engine import memory
from tests.models import CountCalls, SmallNet


def test_auto_batch_size_is_a_share_of_the_free_memory_in_bounds():
    row = torch.zeros(3, 224, 224)  # 602,112 bytes; x ROW_COST 32 = 19,267,584 bytes per row
    assert memory.auto_batch_size(row, free=8 * 2**30) == 111  # 2 GiB / 19.3 MB
    assert memory.auto_batch_size(row, free=2**30) == 16  # 13.9: the lower bound
    assert memory.auto_batch_size(row, free=2**40) == 256  # the upper bound
    assert memory.auto_batch_size(row.half(), free=8 * 2**30) == 222  # half the bytes per row
    assert memory.auto_batch_size(torch.zeros(3, 112, 112), free=2 * 2**30) == 111


def test_free_memory_of_the_cpu_and_of_cuda(monkeypatch):
    free = memory.free_memory(torch.device("cpu"))
    assert free is not None  # this machine's /proc/meminfo (or sysconf)
    assert free > 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    assert memory.free_memory(torch.device("cuda", 0)) == 3 * 2**30
    assert memory.free_memory(torch.device("meta")) is None


def test_unknown_free_memory_gives_the_fallback(monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: None)
    assert memory.auto_batch_size(torch.zeros(3, 8, 8)) == memory.FALLBACK_ROWS == 32


@pytest.mark.parametrize(("free", "largest"), [(0, 16), (2**50, 50)])
def test_the_default_batch_follows_the_free_memory_and_an_explicit_one_wins(monkeypatch, free, largest):
    """IS-CAM, 5 channels x 10 path steps = 50 masked inputs per image: calls of 16 with (almost) no free
    memory, one call of all 50 with plenty; batch_size=7 (or cam.batch_size = 7) is kept as given."""
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    torch.manual_seed(0)
    inner = SmallNet().eval()
    model = CountCalls(inner)
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(1))
    cam = ISCAM(model, [inner.act], num_samples=10)
    assert cam.batch_size is None
    auto = cam(x, targets=[1])
    assert max(model.batches[1:]) == largest
    assert sum(model.batches[1:]) == 50
    model.batches.clear()
    cam.batch_size = 7
    explicit = cam(x, targets=[1])
    torch.testing.assert_close(torch.from_numpy(explicit), torch.from_numpy(auto), atol=1e-6, rtol=0)
    assert max(model.batches[1:]) == 7
    assert ScoreCAM(model, [inner.act], batch_size=9).batch_size == 9
