"""Timing and peak-memory helpers shared by the benchmarks (run as scripts: ``python benchmarks/X.py``)."""

import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def peak_mib(device: str) -> float:
    """This process's peak memory in MiB: CUDA allocations, or VmHWM on the CPU (ru_maxrss would carry
    the parent's peak over the exec)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
    return int(hwm.split()[1]) / 1024
