"""What the machine can do at most, measured in the bench's own process and moment: so a speed figure can be
stated as a fraction of the limit, which means the same on this CPU and on a GPU.

- ``memory_bandwidth``: bytes read plus written per second by a large tensor copy (the best of a few).
- ``matmul_peak``: FLOP/s of a large square GEMM (fp32 on a CPU, bf16 on a GPU by default; the best of a few).
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


def matmul_peak(device: torch.device, dtype: torch.dtype | None = None, size: int | None = None,
                repeats: int = 5) -> float:
    """FLOP/s of a ``size`` x ``size`` GEMM (2 * size^3 FLOPs)."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / _best_seconds(lambda: a @ b, device, repeats)
