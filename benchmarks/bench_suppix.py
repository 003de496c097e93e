"""Superpixel pooling: snnspx kernels against torch.Tensor.scatter_reduce (pooling) and
torch.gather (unpooling), forward and backward, timed in the same run.

Shapes (the SRM benchmark's): CPU T,B,C,H,W = 16,4,32,32,32 with K = 64; GPU
16,16,64,64,64 with K = 256. One label map per image: square cells with the
superpixel numbers shuffled per image. The baselines take the labels expanded
to x's size (a view), as scatter_reduce/gather need an index of that shape. The labels
have no negative (ignored) pixels, so a plain gather computes unpooling; one more row
times the gather with the mask that labels with ignored pixels need.

    python benchmarks/bench_suppix.py [--device cpu|cuda] [--write]

On CUDA, extra rows time the earlier default kernels (the legacy strategies of
benchmarks/common.py: sorted pooling, one-pixel gather), forced only around those measurements.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LEGACY, Table, add_keep_freed_memory, keep_freed_memory, legacy_cuda, parser, time_ms  # noqa: E402

import snnspx  # noqa: E402
from snnspx import functional as F  # noqa: E402
from snnspx.superpixels import grid_superpixels  # noqa: E402


def backward_ms(fn, inp: torch.Tensor, grad: torch.Tensor, min_run_time: float) -> float:
    """Time of the backward alone: the graph is built once and kept."""
    inp = inp.detach().requires_grad_()
    out = fn(inp)
    return time_ms(lambda: torch.autograd.grad(out, inp, grad, retain_graph=True), min_run_time)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing (CPU)")
    add_keep_freed_memory(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    dev = args.device
    T, B, C, H, W = (16, 16, 64, 64, 64) if dev == "cuda" else (16, 4, 32, 32, 32)
    K = 256 if dev == "cuda" else 64
    if args.quick:
        T, B, C, H, W, K = 4, 2, 4, 8, 8, 16
    cell = H // int(round(K**0.5))
    gen = torch.Generator().manual_seed(0)
    grid = grid_superpixels(H, W, cell)
    labels = torch.stack([torch.randperm(K, generator=gen)[grid] for _ in range(B)]).to(dev)  # [B, H, W]
    x = torch.randn((T, B, C, H, W), generator=gen).to(dev)
    g_y = torch.randn((T, B, C, K), generator=gen).to(dev)
    g_x = torch.randn((T, B, C, H, W), generator=gen).to(dev)
    P = H * W
    idx = labels.reshape(1, B, 1, P).expand(T, B, C, P)
    kernel = "cuda" if dev == "cuda" else "cpp"
    run = lambda f: time_ms(f, args.min_run_time)  # noqa: E731

    def scatter(v, reduce):
        return torch.zeros((T, B, C, K), device=dev, dtype=v.dtype).scatter_reduce(
            -1, idx, v.reshape(T, B, C, P), reduce, include_self=False
        )

    def ours(v, mode, **kw):
        return F.suppix_pool(v, labels, num_superpixels=K, mode=mode, backend=kernel, **kw)

    t = Table(
        f"Superpixel pooling, {dev}, T,B,C,H,W = {T},{B},{C},{H},{W}, K = {K}",
        ["pass", "PyTorch (ms)", "snnspx (ms)", "speed-up"],
    )

    def row(name, base, mine):
        t.add(name, base, mine, f"{base / mine:.1f}x")

    bases = {}
    for mode, reduce in (("avg", "mean"), ("max", "amax"), ("sum", "sum")):
        base = bases[mode] = run(lambda: scatter(x, reduce))
        row(f"pool {mode}, forward (scatter_reduce {reduce!r})", base, run(lambda: ours(x, mode)))
        row(f"pool {mode}, forward, check_labels=False", base, run(lambda: ours(x, mode, check_labels=False)))
        base_b = backward_ms(lambda v: scatter(v, reduce), x, g_y, args.min_run_time)
        row(f"pool {mode}, backward", base_b, backward_ms(lambda v: ours(v, mode), x, g_y, args.min_run_time))
    row("pool avg, backward grad='spike' (vs mean's backward)",
        backward_ms(lambda v: scatter(v, "mean"), x, g_y, args.min_run_time),
        backward_ms(lambda v: ours(v, "avg", grad="spike"), x, g_y, args.min_run_time))

    def gather(v):
        return v.gather(-1, idx).reshape(T, B, C, H, W)

    def unpool(v, **kw):
        return F.suppix_unpool(v, labels, backend=kernel, **kw)

    base = run(lambda: gather(g_y))
    row("unpool, forward (gather)", base, run(lambda: unpool(g_y)))
    row("unpool, forward, check_labels=False", base, run(lambda: unpool(g_y, check_labels=False)))
    # The benchmark's labels have no negative (ignored) pixels, so the plain gather above
    # computes suppix_unpool here; for any labels, PyTorch also needs the mask below.
    idx_c = labels.clamp(min=0).reshape(1, B, 1, P).expand(T, B, C, P)
    keep = (labels >= 0).reshape(1, B, 1, P)

    def gather_masked(v):
        return torch.where(keep, v.gather(-1, idx_c), 0).reshape(T, B, C, H, W)

    row("unpool, forward (gather + mask of negative labels: the same maths for any labels)",
        run(lambda: gather_masked(g_y)), run(lambda: unpool(g_y)))
    row("unpool, backward", backward_ms(gather, g_y, g_x, args.min_run_time),
        backward_ms(unpool, g_y, g_x, args.min_run_time))
    if dev == "cuda":
        nbytes = x.numel() * x.element_size()
        t.add("read x once (x.sum(), bandwidth floor)", run(lambda: x.sum()), "", f"{nbytes:.3g} B read")
        with legacy_cuda():
            for mode in ("avg", "max", "sum"):
                row(f"pool {mode}, forward, {LEGACY}", bases[mode], run(lambda: ours(x, mode)))
            row(f"pool avg, backward, {LEGACY}", backward_ms(lambda v: scatter(v, "mean"), x, g_y, args.min_run_time),
                backward_ms(lambda v: ours(v, "avg"), x, g_y, args.min_run_time))
            row(f"unpool, forward, {LEGACY}", base, run(lambda: unpool(g_y)))
    t.emit(
        dev, args.write,
        f"Threads: {torch.get_num_threads()}. snnspx backend: {kernel}"
        + ("; glibc keeps freed memory (--keep-freed-memory)." if args.keep_freed_memory else "."),
    )


if __name__ == "__main__":
    main()
