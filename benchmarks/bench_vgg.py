"""A VGG training step on the CPU: snnspx layers against the same network in plain PyTorch.

The network is examples/train_vgg.py's (the original's CIFAR-10 VGG: 8 convolutions, 3 pools,
3 dense layers, dropout 0.1, standardised weights, SRM constants tau_m 7, tau_s 4, tau_grad
3.5, T = 12) with every width divided by ``--width`` (default 4: convolutions 32-32-64x3-128x3,
dense 512-512-10), batch ``--batch`` (default 8) of 3 x 32 x 32 inputs at 30 % spike density.
A step is forward + backward + Adam step.

* snnspx: ``make_vgg`` of the example (SRMConv2d, SRMLinear, SpikeAvgPool2d, SpikeDropout;
  default backend, ``cpp`` on the CPU), event-driven gradient.
* baseline: the same layers from ``nn.Conv2d``/``nn.Linear`` weights (standardised by the same
  formula), ``F.avg_pool2d`` per step, the same dropout, and the SRM neuron as an eager
  Python loop over T (docs/maths.md §2) that autograd records; the threshold's derivative is
  an arctan surrogate, as a plain-PyTorch SNN would be trained. Same forward maths (the
  script reports the fraction of output spikes that differ), a different gradient: the rows
  compare the cost of a training step.

Both run in the same process, at 1 and then 2 threads (``torch.set_num_threads``).

    python benchmarks/bench_vgg.py [--width 4] [--batch 8] [--min-run-time 1] [--write]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as TF
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
from common import (  # noqa: E402
    PerStep, Table, add_keep_freed_memory, keep_freed_memory, parser, srm_eager, time_ms,
)

import snnspx  # noqa: E402
from train_vgg import make_vgg  # noqa: E402


def standardized(w: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row (dim 0) of ``w`` to mean 0 and unbiased variance 1 (+ eps), then ``* g + b``."""
    rows = w.flatten(1)
    var, mean = torch.var_mean(rows, dim=1, keepdim=True)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return ((rows - mean) / torch.sqrt(var + eps)).view_as(w) * g.view(shape) + b.view(shape)


class EagerSRMLayer(nn.Module):
    """A copy of an SRMConv2d or SRMLinear (same weight, bn_weight, bn_bias) in plain PyTorch."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.conv = isinstance(layer, snnspx.nn.SRMConv2d)
        base = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, padding=layer.padding,
                         bias=False) if self.conv else nn.Linear(layer.in_features, layer.out_features, bias=False)
        with torch.no_grad():
            base.weight.copy_(layer.weight)
        self.base = base
        self.bn_weight = nn.Parameter(layer.bn_weight.detach().clone())
        self.bn_bias = nn.Parameter(layer.bn_bias.detach().clone())
        self.params, self.eps = layer.params, layer.eps

    def forward(self, s_in: torch.Tensor) -> torch.Tensor:
        w = standardized(self.base.weight, self.bn_weight, self.bn_bias, self.eps)
        if self.conv:
            x = TF.conv2d(s_in.flatten(0, 1), w, padding=self.base.padding).unflatten(0, s_in.shape[:2])
        else:
            x = s_in @ w.t()
        return srm_eager(x, self.params)


def eager_copy(net: nn.Sequential) -> nn.Sequential:
    """The baseline: the snnspx network's layers, each replaced by its plain-PyTorch twin."""
    layers = []
    for m in net:
        if isinstance(m, (snnspx.nn.SRMConv2d, snnspx.nn.SRMLinear)):
            layers.append(EagerSRMLayer(m))
        elif isinstance(m, snnspx.nn.SpikeAvgPool2d):
            layers.append(PerStep(nn.AvgPool2d(m.kernel_size[0])))
        else:
            layers.append(m)  # Flatten, SpikeDropout: plain PyTorch already
    return nn.Sequential(*layers)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--width", type=int, default=4, help="divide the VGG widths by this (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default %(default)s)")
    add_keep_freed_memory(p)
    args = p.parse_args()
    if args.device != "cpu":
        raise SystemExit("bench_vgg.py measures the CPU: run it with --device cpu")
    if args.keep_freed_memory:
        keep_freed_memory()
    T, B, width = 12, args.batch, args.width
    if args.quick:
        T, B, width = 8, 2, 32
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    s_in = (torch.rand(T, B, 3, 32, 32, generator=gen) < 0.3).float()
    labels = torch.randint(0, 10, (B,), generator=gen)
    net = make_vgg(width)
    snnspx.init.rate_init(net, s_in, target=1.0)
    base = eager_copy(net)
    loss_fn = snnspx.losses.SpikeCountLoss(desired_count=10, undesired_count=1)

    net.eval()
    base.eval()
    with torch.no_grad():
        ours, theirs = net(s_in), base(s_in)
    mismatch = (ours != theirs).float().mean().item()
    rate = ours.mean().item()
    net.train()
    base.train()

    def train_step(model, opt):
        def step():
            loss = loss_fn(model(s_in), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    def infer(model):
        def fwd():
            with torch.no_grad():
                model(s_in)
        return fwd

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        # fresh optimizers per thread count; lr 0 keeps the weights (and so the work) fixed
        opt_o = torch.optim.Adam(net.parameters(), lr=0.0)
        opt_b = torch.optim.Adam(base.parameters(), lr=0.0)
        net.eval()
        base.eval()
        inf_b, inf_o = time_ms(infer(base), args.min_run_time), time_ms(infer(net), args.min_run_time)
        net.train()
        base.train()
        step_b = time_ms(train_step(base, opt_b), args.min_run_time)
        step_o = time_ms(train_step(net, opt_o), args.min_run_time)
        rows.append((threads, inf_b, inf_o, step_b, step_o))

    convs = [m.out_channels for m in net if isinstance(m, snnspx.nn.SRMConv2d)]
    fcs = [m.out_features for m in net if isinstance(m, snnspx.nn.SRMLinear)]
    t = Table(
        f"VGG training step, cpu, widths / {width} (conv {'-'.join(map(str, convs))}, FC "
        f"{'-'.join(map(str, fcs))}), T,B = {T},{B}, 3 x 32 x 32",
        ["threads", "pass", "nn.Conv2d/nn.Linear + eager SRM loop (ms)", "snnspx layers (ms)", "speed-up"],
    )
    for threads, inf_b, inf_o, step_b, step_o in rows:
        t.add(str(threads), "inference forward", inf_b, inf_o, f"{inf_b / inf_o:.1f}x")
        t.add(str(threads), "training step (fwd + bwd + Adam)", step_b, step_o, f"{step_b / step_o:.1f}x")
    notes = (
        f"Input spikes 30 %, after rate_init (target 1 spike per neuron); output rate {rate:.3f}; output "
        f"spikes that differ from the baseline's: {mismatch:.1e}. Baseline gradient: autograd through "
        f"the loop with an arctan surrogate; snnspx: the event-driven gradient."
        + (" glibc keeps freed memory (--keep-freed-memory)." if args.keep_freed_memory else "")
    )
    t.emit("cpu", args.write, notes)


if __name__ == "__main__":
    main()
