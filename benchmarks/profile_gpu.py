"""Where the GPU time of one call goes: per-kernel device time (torch.profiler) of the
superpixel ops and the fused op (inference and training) at the benchmark shapes, with the
default strategies and with each other CUDA strategy forced (csrc/cuda/strategy.h). A diagnostic, not a benchmark: the
ratios in docs/benchmarks.md come from the bench_*.py scripts.

    python benchmarks/profile_gpu.py [--calls 20]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from snnspx import functional as F
from snnspx.superpixels import grid_superpixels


def kernel_times(fn, calls: int) -> tuple[dict[str, float], float]:
    """Mean device microseconds per call of each kernel fn launches, and their sum."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = ev.cuda_time_total
        if t > 0 and ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.key[:70]] += t / calls
    return dict(per), sum(per.values())


def wall_us(fn, calls: int) -> float:
    """Wall microseconds per call of fn, synchronised: above the kernels' sum when the host is the bottleneck."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    T, B, C, H, W, K = 16, 16, 64, 64, 64, 256
    gen = torch.Generator().manual_seed(0)
    grid = grid_superpixels(H, W, 4)
    grid_d = grid.cuda()  # shared by the batch, for the fused op
    labels = torch.stack([torch.randperm(K, generator=gen)[grid] for _ in range(B)]).cuda()
    x = torch.randn((T, B, C, H, W), generator=gen).cuda()
    currents = (torch.randn((T, B, C, H, W), generator=gen) + 0.5).cuda()
    y = torch.randn((T, B, C, K), generator=gen).cuda()
    xg = currents.clone().requires_grad_()

    def fused_train():
        with torch.enable_grad():
            F.srm_suppix_pool(xg, grid_d, num_superpixels=K, mode="avg").sum().backward()

    cases = {
        "suppix_pool avg": lambda: F.suppix_pool(x, labels, num_superpixels=K, mode="avg"),
        "suppix_pool avg, check_labels=False": lambda: F.suppix_pool(x, labels, num_superpixels=K, mode="avg", check_labels=False),
        "suppix_pool sum, check_labels=False": lambda: F.suppix_pool(x, labels, num_superpixels=K, mode="sum", check_labels=False),
        "suppix_pool avg grad='spike', check_labels=False": lambda: F.suppix_pool(
            x, labels, num_superpixels=K, mode="avg", grad="spike", check_labels=False
        ),
        "suppix_pool max": lambda: F.suppix_pool(x, labels, num_superpixels=K, mode="max"),
        "suppix_unpool": lambda: F.suppix_unpool(y, labels),
        "srm_suppix_pool avg (inference)": lambda: F.srm_suppix_pool(currents, grid_d, num_superpixels=K, mode="avg"),
        "srm_suppix_pool avg (inference), check_labels=False": lambda: F.srm_suppix_pool(
            currents, grid_d, num_superpixels=K, mode="avg", check_labels=False
        ),
        "srm_suppix_pool avg (inference), no spikes (v_th=1e9)": lambda: F.srm_suppix_pool(
            currents, grid_d, num_superpixels=K, mode="avg", v_th=1e9
        ),
        "srm_suppix_pool avg (training fwd+bwd, grad accumulated)": fused_train,
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; T,B,C,H,W,K = {T},{B},{C},{H},{W},{K}")
    import contextlib

    from common import force_strategies

    forced = [None, "sorted", "nosort_quad", "max_key", "one_pixel", "tiled_reuse", "atomic", "plane", "per_spike"]
    with torch.no_grad():
        for name, fn in cases.items():
            for strategy in forced:
                ctx = contextlib.nullcontext() if strategy is None else force_strategies(strategy, lenient=True)
                with ctx as mode:
                    per, total = kernel_times(fn, args.calls)
                    wall = wall_us(fn, args.calls)
                if mode is not None and not mode.runs:
                    continue  # the strategy does not apply to this call
                label = "default strategies" if strategy is None else f"forcing {strategy!r} ({dict(mode.runs)})"
                print(f"\n{name}, {label}: {total:.1f} us of kernels, {wall:.1f} us wall per call")
                for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
                    print(f"  {v:9.1f} us  {k}")


if __name__ == "__main__":
    main()
