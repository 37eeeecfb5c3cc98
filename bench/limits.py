"""What the machine can do at most, measured in the bench's own process and moment: so a speed figure can be
stated as a fraction of the limit, which means the same on this CPU and on a GPU.

- ``memory_bandwidth``: bytes read plus written per second by a large tensor copy (the best of a few).
"""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(work, device: torch.device, repeats: int) -> float:
    work()  # warm-up: page faults, allocator, kernel selection
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second moved by copying a ``gib``-GiB float32 tensor into another (read + write)."""
    n = int(gib * 2**30) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), device, repeats)

