"""How many perturbed inputs fit in one forward pass: the default ``batch_size`` of the perturbation methods.

The free memory of the compute device (CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of
``/proc/meminfo``, else ``os.sysconf``), a share of it, divided by an estimate of what one input row
costs, bounded to ``MIN_ROWS..MAX_ROWS``. Read at each call, so a busy machine gets smaller batches.
"""

from __future__ import annotations

import os

import torch

#: The bounds of the automatic batch size.
MIN_ROWS, MAX_ROWS = 16, 256
#: Where the free memory cannot be read (another accelerator, a system without ``/proc`` or ``sysconf``).
FALLBACK_ROWS = 32
#: The share of the free memory one call's batches may take.
MEMORY_SHARE = 0.25
#: What a forward pass holds per input row, in units of the row itself: the input, its largest
#: activations (a CNN's early stages are 5 to 16 times the input) and the batch's masks, with a margin.
ROW_COST = 32


def free_memory(device: torch.device) -> int | None:
    """The bytes free on ``device`` now, or None where they cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def auto_batch_size(row: torch.Tensor, free: int | None = None) -> int:
    """The rows per forward pass for inputs like ``row`` (one input, ``(C, *spatial)``), in ``16..256``.

    ``MEMORY_SHARE`` of the free memory of ``row``'s device (or ``free`` bytes, when given) divided by
    ``ROW_COST`` times the row's bytes; ``FALLBACK_ROWS`` where the free memory cannot be read.

    Example:
        >>> auto_batch_size(torch.zeros(3, 224, 224), free=8 * 2**30)  # 8 GiB free: 2 GiB / 19 MiB
        111
    """
    if free is None:
        free = free_memory(row.device)
    if free is None:
        return FALLBACK_ROWS
    row_bytes = max(1, row.numel() * row.element_size() * ROW_COST)
    return int(min(MAX_ROWS, max(MIN_ROWS, free * MEMORY_SHARE // row_bytes)))
