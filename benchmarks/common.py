"""Shared helpers of the benchmark scripts: timing, machine description, tables.

Every ratio is measured in the same run against the PyTorch baseline printed
beside it. ``--write`` appends the table to docs/benchmarks.md with the machine
and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from torch import nn

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--write", action="store_true", help="append the table to docs/benchmarks.md")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per measurement")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test of the script itself)")
    return p


def keep_freed_memory() -> None:
    """glibc: serve large tensors from the heap and never trim it (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).

    By default glibc maps each large block afresh and unmaps it when freed, so every new
    tensor of a few MB pays page faults; whether an op hits that depends on the allocation
    pattern around it, which makes CPU timings of equal maths differ by several ms.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if not (libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)):
        raise RuntimeError("mallopt failed: --keep-freed-memory needs glibc")


def add_keep_freed_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU: glibc keeps freed memory for reuse (as jemalloc/tcmalloc do), so timings "
                        "measure compute rather than first-touch page faults of fresh tensors")


def time_ms(fn, min_run_time: float = 0.5) -> float:
    """Median wall time of fn() in milliseconds (CUDA-synchronised by torch.utils.benchmark)."""
    fn()  # warm-up: builds, caches, autotuning
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


class ATanSpike(torch.autograd.Function):
    """Heaviside ``v > 0``; backward the derivative of ``atan(pi/2 * alpha * v) / pi + 1/2``."""

    @staticmethod
    def forward(ctx, v, alpha):
        ctx.save_for_backward(v)
        ctx.alpha = alpha
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * v) ** 2), None


def srm_eager(x: torch.Tensor, p, alpha: float = 2.0) -> torch.Tensor:
    """The SRM neuron of docs/maths.md §2 (an snnspx.SRMParams `p`) over ``[T, ...]`` currents as
    a plain PyTorch user would write it: one autograd op at a time, an arctan surrogate."""
    a_m, a_s, _, c = p.constants()
    m = torch.zeros_like(x[0])
    s = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        m = (m + x[t]) * a_m
        s = (s + x[t]) * a_s
        spike = ATanSpike.apply(c * (m - s) - p.v_th, alpha)
        keep = 1 - spike.detach()  # reset after a spike; the gradient goes through the spike
        m, s = m * keep, s * keep
        out.append(spike)
    return torch.stack(out)


class PerStep(nn.Module):
    """A per-step module (conv, pool, linear) applied to ``[T, B, ...]``."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class Table:
    def __init__(self, title: str, columns: list[str]):
        self.title, self.columns, self.rows = title, columns, []

    def add(self, *row) -> None:
        self.rows.append([f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def emit(self, device: str, write: bool, notes: str = "") -> None:
        stamp = datetime.date.today().isoformat()
        block = f"### {self.title}\n\n{machine(device)}, {stamp}.{(' ' + notes) if notes else ''}\n\n{self.markdown()}\n"
        print(block)
        if write:
            with DOCS.open("a") as f:
                f.write("\n" + block)


# The strategies that were the CUDA defaults before the current ones (csrc/cuda/strategy.h).
LEGACY_STRATEGIES = {
    "suppix_pool": "sorted", "suppix_pool_backward": "one_pixel", "suppix_unpool": "one_pixel",
    "srm_suppix_pool": "atomic", "srm_suppix_pool_fwd": "atomic", "srm_suppix_pool_bwd": "per_spike",
}
LEGACY = "legacy strategies"


def force_strategies(strategies, lenient: bool = False):
    """A context in which the snnspx ops run the named strategies (tests/conftest.py's
    ForceStrategy: a dispatch mode, which adds some microseconds of Python per op call)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import ForceStrategy

    return ForceStrategy(strategies, lenient=lenient)


@contextlib.contextmanager
def legacy_cuda():
    """The earlier default CUDA kernels inside the block (LEGACY_STRATEGIES)."""
    with force_strategies(LEGACY_STRATEGIES):
        yield
