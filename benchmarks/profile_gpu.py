"""Where the GPU time of one call goes: per-kernel device time (torch.profiler) of the
superpixel ops and the fused op (inference and training) at the benchmark shapes, with the
default kernels and with SNNSPX_LEGACY_CUDA=1 (the earlier defaults). A diagnostic, not a benchmark: the
ratios in docs/benchmarks.md come from the bench_*.py scripts.

    python benchmarks/profile_gpu.py [--calls 20]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import snnspx
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
            F.srm_suppix_pool(xg, grid_d, K, "avg").sum().backward()

    cases = {
        "suppix_pool avg": lambda: F.suppix_pool(x, labels, K, "avg"),
        "suppix_pool avg, check_labels=False": lambda: F.suppix_pool(x, labels, K, "avg", check_labels=False),
        "suppix_pool sum, check_labels=False": lambda: F.suppix_pool(x, labels, K, "sum", check_labels=False),
        "suppix_pool avg grad='spike', check_labels=False": lambda: F.suppix_pool(
            x, labels, K, "avg", grad="spike", check_labels=False
        ),
        "suppix_pool max": lambda: F.suppix_pool(x, labels, K, "max"),
        "suppix_unpool": lambda: F.suppix_unpool(y, labels),
        "srm_suppix_pool avg (inference)": lambda: F.srm_suppix_pool(currents, grid_d, K, "avg"),
        "srm_suppix_pool avg (inference), check_labels=False": lambda: F.srm_suppix_pool(
            currents, grid_d, K, "avg", check_labels=False
        ),
        "srm_suppix_pool avg (inference), no spikes (v_th=1e9)": lambda: F.srm_suppix_pool(
            currents, grid_d, K, "avg", v_th=1e9
        ),
        "srm_suppix_pool avg (training fwd+bwd, grad accumulated)": fused_train,
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; T,B,C,H,W,K = {T},{B},{C},{H},{W},{K}")
    with torch.no_grad():
        for name, fn in cases.items():
            for flag in ("0", "1"):
                os.environ["SNNSPX_LEGACY_CUDA"] = flag
                per, total = kernel_times(fn, args.calls)
                wall = wall_us(fn, args.calls)
                print(f"\n{name}, SNNSPX_LEGACY_CUDA={flag}: {total:.1f} us of kernels, {wall:.1f} us wall per call")
                for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
                    print(f"  {v:9.1f} us  {k}")
    os.environ.pop("SNNSPX_LEGACY_CUDA", None)
    names = ["cuda.suppix_pool", "cuda.suppix_pool_nosort", "cuda.suppix_pool_nosort_quad", "cuda.suppix_pool_max_key",
             "cuda.suppix_pool_max_key_quad",
             "cuda.suppix_gather_tiled", "cuda.srm_suppix_pool",
             "cuda.srm_suppix_pool_quad", "cuda.srm_suppix_pool_plane"]
    print("\ncompiled kernel calls:", {n: snnspx.kernel_calls(n) for n in names})


if __name__ == "__main__":
    main()
