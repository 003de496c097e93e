"""SRMConv2d forward+backward: snnspx against the same layer from PyTorch conv ops + the eager SRM loop;
SpikeAvgPool2d's ops against PyTorch's average pooling.

Both layers run the same maths: the convolution and its two backward products come from
PyTorch in both; they differ in the SRM neuron (snnspx kernels against the vectorised
Python time loop of the ``torch`` backend). A plain ``nn.Conv2d`` forward+backward is
timed as the floor that the convolution alone costs.

Shapes: CPU T,B,C,H,W = 16,4,32,32,32; GPU 16,16,64,64,64; C_in = C_out = C, 3x3,
padding 1, input spikes at 20% density.

SpikeAvgPool2d: the first pooling layer of the digits network of the issue, input spikes
T,B,C,H,W = 8,16,32,26,26 at 20% density, kernel 2; on the CPU with 1 and 2 threads. Forward:
``spike_avg_pool2d`` (which also counts each window's spikes) against ``F.avg_pool2d``; backward:
the op ``spike_avg_pool2d_bwd``, from the forward's window counts, against
``aten.avg_pool2d_backward`` (``nn.AvgPool2d``'s backward, whose gradient rule differs, and which
reads no counts) and against the op's own PyTorch kernel (``backend="torch"``).

    python benchmarks/bench_layers.py [--device cpu|cuda] [--write] [--part all|conv|pool]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, add_keep_freed_memory, keep_freed_memory, parser, time_ms  # noqa: E402

import snnspx  # noqa: E402
from snnspx.functional import srm as S  # noqa: E402

P = (5.0, 3.0, 2.5)
V_TH = 0.3  # low enough that a fresh orthogonal layer fires


class EagerSRMConv2d(torch.autograd.Function):
    """The baseline: F.conv2d + the eager SRM loop, conv gradients from torch.nn.grad."""

    @staticmethod
    def forward(ctx, s_in, weight):
        T, B = s_in.shape[:2]
        x = TF.conv2d(s_in.flatten(0, 1), weight, padding=1)
        spikes, du, dut = S._forward_kernel(x.unflatten(0, (T, B)), *P, V_TH, 0)
        ctx.save_for_backward(s_in, weight, spikes, du, dut)
        return spikes

    @staticmethod
    def backward(ctx, grad):
        s_in, weight, spikes, du, dut = ctx.saved_tensors
        grad_w, grad_t = S._backward_kernel(grad.contiguous(), spikes, du, dut, *P, 4.0, snnspx.MAX_DUDT_INV, 0)
        flat = s_in.flatten(0, 1)
        d_weight = torch.nn.grad.conv2d_weight(flat, weight.shape, grad_w.flatten(0, 1), padding=1)
        d_in = torch.nn.grad.conv2d_input(flat.shape, weight, grad_t.flatten(0, 1), padding=1)
        return d_in.view_as(s_in) * s_in * 0.85, d_weight


def saved_bytes(fn, s_in, weight) -> float:
    """Bytes autograd keeps that are not the input, the weight or the output, per output neuron-step."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(s_in, weight)
    known = {s_in.data_ptr(), weight.data_ptr(), out.data_ptr()}
    return sum(t.numel() * t.element_size() for t in saved if t.data_ptr() not in known) / out.numel()


def pool_table(args) -> None:
    """SpikeAvgPool2d's two ops against PyTorch's average pooling, per thread count on the CPU."""
    dev = args.device
    T, B, C, H, W = (2, 2, 4, 9, 9) if args.quick else (8, 16, 32, 26, 26)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(T, B, C, H, W, generator=gen) < 0.2).float().to(dev)
    g = torch.randn(T, B, C, H // 2, W // 2, generator=gen).to(dev)
    x4, g4 = x.flatten(0, 1), g.flatten(0, 1)
    kernel = "cuda" if dev == "cuda" else "cpp"
    snnspx.functional.spike_avg_pool2d(x, backend=kernel)  # builds or loads the library
    ops = torch.ops.snnspx
    run = lambda f: time_ms(f, args.min_run_time)  # noqa: E731
    t = Table(
        f"SpikeAvgPool2d kernel 2, {dev}, T,B,C,H,W = {T},{B},{C},{H},{W}, 20% spikes",
        ["pass", "threads", "PyTorch baseline", "baseline (ms)", f"snnspx {kernel} (ms)", "speed-up"],
    )
    threads = [args.threads] if args.threads else ([1, 2] if dev == "cpu" else [torch.get_num_threads()])
    before = torch.get_num_threads()
    for n in threads:
        torch.set_num_threads(n)
        fwd_base = run(lambda: TF.avg_pool2d(x4, 2))
        fwd = run(lambda: ops.spike_avg_pool2d(x, 2, 2))
        bwd_base = run(lambda: torch.ops.aten.avg_pool2d_backward(g4, x4, [2, 2], [2, 2], [0, 0], False, True, None))
        count = ops.spike_avg_pool2d(x, 2, 2)[1]  # what autograd keeps for the backward
        bwd = run(lambda: ops.spike_avg_pool2d_bwd(g, count, 2, 2, H, W))
        with snnspx._library.torch_kernels():
            bwd_torch = run(lambda: ops.spike_avg_pool2d_bwd(g, count, 2, 2, H, W))
        label = n if dev == "cpu" else "-"
        t.add("forward", label, "F.avg_pool2d", fwd_base, fwd, f"{fwd_base / fwd:.1f}x")
        t.add("backward", label, "nn.AvgPool2d's backward", bwd_base, bwd, f"{bwd_base / bwd:.1f}x")
        t.add("backward", label, "the op's PyTorch kernel", bwd_torch, bwd, f"{bwd_torch / bwd:.1f}x")
    torch.set_num_threads(before)
    notes = ("Op calls, no autograd; medians of torch.utils.benchmark"
             + ("; glibc keeps freed memory (--keep-freed-memory)." if args.keep_freed_memory else "."))
    t.emit(dev, args.write, notes)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice; pool: 1 and 2)")
    p.add_argument("--part", default="all", choices=["all", "conv", "pool"], help="which tables")
    add_keep_freed_memory(p)
    args = p.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.part in ("all", "pool"):
        pool_table(args)
    if args.part == "pool":
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    T, B, C, H, W = (16, 16, 64, 64, 64) if dev == "cuda" else (16, 4, 32, 32, 32)
    if args.quick:
        T, B, C, H, W = 4, 2, 4, 8, 8
    gen = torch.Generator().manual_seed(0)
    s_in = (torch.rand(T, B, C, H, W, generator=gen) < 0.2).float().to(dev).requires_grad_()
    kernel = "cuda" if dev == "cuda" else "cpp"
    torch.manual_seed(0)
    layer = snnspx.nn.SRMConv2d(C, C, 3, padding=1, v_th=V_TH, backend=kernel).to(dev)
    weight = layer.weight
    run = lambda f: time_ms(f, args.min_run_time)  # noqa: E731

    out = layer(s_in)
    grad = torch.randn(out.shape, generator=gen).to(dev)
    base_out = EagerSRMConv2d.apply(s_in, weight)
    # Same maths; a differing convolution algorithm could still flip a spike at the threshold.
    mismatch = (out != base_out).float().mean().item()
    rate = out.float().mean().item()

    def fwd_bwd(fn):
        def step():
            s_in.grad = weight.grad = None
            fn(s_in, weight).backward(grad)
        return step

    def snn(s, w):
        return layer(s)

    conv = torch.nn.Conv2d(C, C, 3, padding=1, bias=False).to(dev)
    flat = s_in.detach().flatten(0, 1).requires_grad_()
    flat_grad = torch.randn(T * B, C, H, W, generator=gen).to(dev)

    def conv_only():
        flat.grad = conv.weight.grad = None
        conv(flat).backward(flat_grad)

    base_f = run(lambda: EagerSRMConv2d.apply(s_in, weight))
    ours_f = run(lambda: snn(s_in, weight))
    base_fb = run(fwd_bwd(EagerSRMConv2d.apply))
    ours_fb = run(fwd_bwd(snn))
    conv_fb = run(conv_only)

    t = Table(
        f"SRMConv2d {C}->{C} 3x3 pad 1, {dev}, T,B,C,H,W = {T},{B},{C},{H},{W}",
        ["pass", "conv ops + eager SRM loop (ms)", "snnspx SRMConv2d (ms)", "speed-up"],
    )
    t.add("forward", base_f, ours_f, f"{base_f / ours_f:.1f}x")
    t.add("backward (forward+backward minus forward)", base_fb - base_f, ours_fb - ours_f,
          f"{(base_fb - base_f) / (ours_fb - ours_f):.1f}x")
    t.add("forward+backward", base_fb, ours_fb, f"{base_fb / ours_fb:.1f}x")
    t.add("nn.Conv2d alone, forward+backward (floor)", conv_fb, "", "")
    notes = (
        f"Output spike rate {rate:.2f} (v_th 0.3), input 20% spikes; outputs that differ from the "
        f"baseline's: {mismatch:.1e}. Autograd keeps, besides input, weight "
        f"and output: {saved_bytes(snn, s_in, weight):.0f} bytes per output neuron-step (snnspx), "
        f"{saved_bytes(EagerSRMConv2d.apply, s_in, weight):.0f} (baseline). SRM backend {kernel!r}; "
        f"threads: {torch.get_num_threads()}"
        + ("; glibc keeps freed memory (--keep-freed-memory)." if args.keep_freed_memory else ".")
    )
    t.emit(dev, args.write, notes)


if __name__ == "__main__":
    main()
