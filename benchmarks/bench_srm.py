"""SRM neuron: snnspx kernels against the PyTorch eager time loop (and torch.compile on a GPU).

Shapes: CPU T,B,C,H,W = 16,4,32,32,32; GPU 16,16,64,64,64. ``--neuron`` times another neuron
variant (snnspx.SRMParams keywords, e.g. ``--neuron fire_if=">=" forward_type=nonleaky``; the
CUDA kernels run the default one only).

    python benchmarks/bench_srm.py [--device cpu|cuda] [--neuron KEY=VALUE ...] [--write]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, parser, time_ms  # noqa: E402

import snnspx  # noqa: E402
from snnspx.functional import srm as S  # noqa: E402



def saved_bytes_per_step(x: torch.Tensor, backend: str) -> float:
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        snnspx.functional.srm_neuron(x.detach().requires_grad_(), backend=backend)
    return sum(sizes) / x.numel()


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--neuron", nargs="*", default=[], metavar="KEY=VALUE", help="SRMParams options (str fields)")
    args = ap.parse_args()
    p = snnspx.SRMParams(**dict(kv.split("=", 1) for kv in args.neuron))
    dev = args.device
    shape = (16, 16, 64, 64, 64) if dev == "cuda" else (16, 4, 32, 32, 32)
    if args.quick:
        shape = (8, 2, 4, 8, 8)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) + 0.5).to(dev)
    grad = torch.randn(shape, generator=gen).to(dev)
    kernel = "cuda" if dev == "cuda" else "cpp"
    run = lambda f: time_ms(f, args.min_run_time)  # noqa: E731

    spikes, du, dut = S._forward_kernel(x, *p.forward_args)
    eager_f = run(lambda: S._forward_kernel(x, *p.forward_args))
    eager_b = run(lambda: S._backward_kernel(grad, spikes, du, dut, *p.backward_args))

    k_fwd = run(lambda: snnspx.functional.srm_forward(x, params=p, backend=kernel))
    k_nfwd = run(lambda: torch.ops.snnspx.srm_neuron_fwd(x, *p.neuron_args, None, False))
    k_bwd = run(lambda: snnspx.functional.srm_backward(grad, spikes, du, dut, params=p, backend=kernel))
    k_nbwd = run(lambda: torch.ops.snnspx.srm_neuron_bwd(grad, x, None, *p.neuron_args, False))
    k_lbwd = run(lambda: torch.ops.snnspx.srm_neuron_bwd(grad, x, None, *p.neuron_args, True))

    t = Table(
        f"SRM neuron, {dev}, T,B,C,H,W = {','.join(map(str, shape))}" + (f", {p.options}" if p.variant else ""),
        ["pass", "PyTorch eager loop (ms)", "snnspx (ms)", "speed-up"],
    )
    t.add("forward: srm_forward (spikes, du, dut)", eager_f, k_fwd, f"{eager_f / k_fwd:.1f}x")
    t.add("forward: srm_neuron (training: the spikes only)", eager_f, k_nfwd, f"{eager_f / k_nfwd:.1f}x")
    t.add("backward: srm_backward (grad_w, grad_t)", eager_b, k_bwd, f"{eager_b / k_bwd:.1f}x")
    t.add("backward: srm_neuron (grad_w, recomputed from x)", eager_b, k_nbwd, f"{eager_b / k_nbwd:.1f}x")
    t.add("backward: the layers' (grad_w, grad_t, recomputed from x)", eager_b, k_lbwd, f"{eager_b / k_lbwd:.1f}x")
    t.add("forward+backward: srm_neuron", eager_f + eager_b, k_nfwd + k_nbwd,
          f"{(eager_f + eager_b) / (k_nfwd + k_nbwd):.1f}x")
    if dev == "cuda":
        compiled = torch.compile(S._forward_kernel, fullgraph=True)
        comp_f = run(lambda: compiled(x, *p.forward_args))
        t.add("forward: torch.compile of the eager loop", comp_f, k_fwd, f"{comp_f / k_fwd:.1f}x")
        nbytes = x.numel() * x.element_size()
        t.add("device copy of x (bandwidth floor reference)", run(lambda: x.clone()), "", f"{2 * nbytes:.3g} B moved")
    notes = (
        f"Saved for backward per neuron-step: {saved_bytes_per_step(x, kernel):.0f} bytes ({kernel}), "
        f"{saved_bytes_per_step(x, 'torch'):.0f} bytes (torch). Threads: {torch.get_num_threads()}."
    )
    t.emit(dev, args.write, notes)


if __name__ == "__main__":
    main()
