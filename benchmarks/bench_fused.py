"""Fused SRM + superpixel pooling against its compositions, inference and training.

Compared in the same run: the fused kernel; PyTorch eager (the eager SRM loop +
``scatter_reduce``); ``torch.compile`` of that composition (Inductor); snnspx's own
unfused pair (``srm_neuron`` + ``suppix_pool``). Shapes: GPU T,B,C,H,W,K =
16,16,64,64,64,256; CPU 16,4,32,32,32,64. Mode "avg".

    python benchmarks/bench_fused.py [--device cpu|cuda] [--write]

On CUDA the fused op is timed a second time with the legacy strategies forced (the earlier
default kernels: the forward with global integer atomics, the backward loading per spike;
benchmarks/common.py's LEGACY_STRATEGIES), only around that measurement. ``--quick`` (tiny shapes, a smoke test)
skips the torch.compile row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LEGACY, Table, legacy_cuda, parser, time_ms  # noqa: E402

import snnspx  # noqa: E402
from snnspx import superpixels  # noqa: E402
from snnspx.functional import srm as S  # noqa: E402


def eager_pool(spikes: torch.Tensor, index: torch.Tensor, K: int) -> torch.Tensor:
    """Mean over superpixels with scatter_reduce; index [T,B,C,P] with ignored pixels sent to bucket K."""
    T, B, C = spikes.shape[:3]
    flat = spikes.reshape(T, B, C, -1)
    out = flat.new_zeros(T, B, C, K + 1)
    return out.scatter_reduce(3, index, flat, "mean", include_self=False)[..., :K]


def main() -> None:
    args = parser(__doc__).parse_args()
    dev = args.device
    T, B, C, H, W, K = (16, 16, 64, 64, 64, 256) if dev == "cuda" else (16, 4, 32, 32, 32, 64)
    if args.quick:
        T, B, C, H, W, K = 4, 2, 3, 8, 8, 4
    cell = max(1, int(round((H * W / K) ** 0.5)))
    labels = superpixels.grid_superpixels(H, W, cell).to(dev)
    K = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn((T, B, C, H, W), generator=gen) + 0.5).to(dev)
    index = labels.reshape(1, 1, 1, -1).expand(T, B, C, -1).clamp(min=-1) % (K + 1)
    index = index.contiguous()
    kernel = "cuda" if dev == "cuda" else "cpp"
    run = lambda f: time_ms(f, args.min_run_time)  # noqa: E731
    F = snnspx.functional

    def eager_inf():
        return eager_pool(S._forward_kernel(x, 5.0, 3.0, 2.5, 1.0, 0)[0], index, K)

    def unfused_inf():
        return F.suppix_pool(F.srm_forward(x, backend=kernel)[0], labels, num_superpixels=K, mode="avg", backend=kernel)

    def fused_inf():
        return F.srm_suppix_pool(x, labels, num_superpixels=K, mode="avg", backend=kernel)

    def fused_inf_unchecked():  # no label range check: no read-back at all
        return F.srm_suppix_pool(x, labels, num_superpixels=K, mode="avg", check_labels=False, backend=kernel)

    xg = x.clone().requires_grad_()

    def eager_train():
        y = eager_pool(F.srm_neuron(xg, backend="torch"), index, K)
        y.sum().backward()

    def unfused_train():
        y = F.suppix_pool(F.srm_neuron(xg, backend=kernel), labels, num_superpixels=K, mode="avg", backend=kernel)
        y.sum().backward()

    def fused_train():
        F.srm_suppix_pool(xg, labels, num_superpixels=K, mode="avg", backend=kernel).sum().backward()

    torch.testing.assert_close(fused_inf(), eager_inf())
    with torch.no_grad():
        e_inf, u_inf, f_inf = run(eager_inf), run(unfused_inf), run(fused_inf)
        f_unchecked = run(fused_inf_unchecked)
    e_tr, u_tr, f_tr = run(eager_train), run(unfused_train), run(fused_train)
    t = Table(
        f"Fused SRM + superpixel pooling (avg), {dev}, T,B,C,H,W,K = {T},{B},{C},{H},{W},{K}",
        ["pass", "implementation", "ms", "fused speed-up"],
    )
    t.add("inference", "PyTorch eager loop + scatter_reduce", e_inf, f"{e_inf / f_inf:.1f}x")
    if not args.quick:  # Inductor's compile time would dominate the smoke test
        comp = torch.compile(eager_inf)
        with torch.no_grad():
            c_inf = run(comp)
        t.add("inference", "torch.compile of that composition", c_inf, f"{c_inf / f_inf:.1f}x")
    t.add("inference", "snnspx unfused (srm_forward + suppix_pool)", u_inf, f"{u_inf / f_inf:.1f}x")
    t.add("inference", "snnspx fused srm_suppix_pool", f_inf, "1.0x")
    t.add("inference", "snnspx fused, check_labels=False", f_unchecked, f"{f_unchecked / f_inf:.2f}x")
    t.add("training fwd+bwd", "PyTorch eager loop + scatter_reduce", e_tr, f"{e_tr / f_tr:.1f}x")
    t.add("training fwd+bwd", "snnspx unfused (srm_neuron + suppix_pool)", u_tr, f"{u_tr / f_tr:.1f}x")
    t.add("training fwd+bwd", "snnspx fused srm_suppix_pool", f_tr, "1.0x")
    notes = f"Grid superpixels of {cell}x{cell} pixels."
    if dev == "cuda":
        with torch.no_grad():
            y_default = fused_inf()
        with legacy_cuda():
            with torch.no_grad():
                same = torch.equal(fused_inf(), y_default)
                x_inf = run(fused_inf)
            x_tr = run(fused_train)
        row = f"snnspx fused, {LEGACY}"
        t.add("inference", row, x_inf, f"{x_inf / f_inf:.2f}x")
        t.add("training fwd+bwd", row, x_tr, f"{x_tr / f_tr:.2f}x")
        notes += f" The {LEGACY}' output bitwise equal to the default kernel's: {'yes' if same else 'NO'}."
    if dev == "cuda":
        nbytes = x.numel() * x.element_size()
        notes += f" Reading x once: {run(lambda: x.sum()):.3f} ms ({nbytes / 1e6:.0f} MB, torch.sum)."
    t.emit(dev, args.write, notes)


if __name__ == "__main__":
    main()
