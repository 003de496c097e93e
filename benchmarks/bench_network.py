"""A whole network's training step and inference: snnspx's SRM layers (event-driven and surrogate
gradient) against the same network with no neurons (the floor) and with a plain PyTorch SRM loop.

    python benchmarks/bench_network.py --device cpu --keep-freed-memory          # 1 and 2 threads
    python benchmarks/bench_network.py --quick                                    # smoke test

Networks, on ``[T, B, ...]`` tensors (``--net conv``, the default, is issue #20's)::

    conv:   conv(2->32, 3) -> neuron -> avgpool 2 -> conv(32->64, 3) -> neuron -> avgpool 2
            -> linear(4096 -> 10) -> neuron;  input spikes [8, 16, 2, 38, 38], 20 % non-zero
    digits: conv(1->16, 3, pad 1) -> neuron -> avgpool 2 -> linear(256 -> 10) -> neuron;
            input [16, 64, 1, 8, 8] (examples/train_digits.py's shape)

Rows (each the median of a training step: forward, a loss on the output counts, backward, one
Adam step; and of inference under ``torch.no_grad``):

* ``floor``: the same ``nn.Conv2d`` / ``nn.AvgPool2d`` / ``nn.Linear`` with ReLU in place of the
  neuron: what the synapses cost on their own;
* ``snnspx event``: ``SRMConv2d`` / ``SpikeAvgPool2d`` / ``SRMLinear`` (no weight norm);
* ``snnspx surrogate``: the same with ``grad="surrogate"``;
* ``PyTorch SRM loop``: ``nn.Conv2d`` etc. and the SRM neuron written as an eager loop over T
  with a Heaviside spike whose backward is an arctan surrogate (what a user would write;
  ``common.srm_eager``, also bench_vgg.py's baseline).

Each is reported in ms and as a ratio to the floor measured in the same run, with the memory
autograd keeps for the backward of one training forward (each storage once, without the
parameters and the input). Inference under ``torch.no_grad`` keeps nothing in any of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PerStep, Table, add_keep_freed_memory, keep_freed_memory, parser, srm_eager, time_ms,
)

import snnspx  # noqa: E402


class LoopSRM(nn.Module):
    """The SRM neuron as an eager PyTorch loop with a surrogate gradient (common.srm_eager)."""

    def forward(self, x):
        return srm_eager(x, snnspx.SRMParams())


def build(kind: str, net: str) -> nn.Module:
    conv_shapes = [(2, 32, 0), (32, 64, 0)] if net == "conv" else [(1, 16, 1)]
    features = 4096 if net == "conv" else 256
    layers: list[nn.Module] = []
    for cin, cout, pad in conv_shapes:
        if kind in ("event", "surrogate"):
            layers += [snnspx.nn.SRMConv2d(cin, cout, 3, padding=pad, grad=kind), snnspx.nn.SpikeAvgPool2d(2)]
        else:
            act = nn.ReLU() if kind == "floor" else LoopSRM()
            layers += [PerStep(nn.Conv2d(cin, cout, 3, padding=pad, bias=False)), act, PerStep(nn.AvgPool2d(2))]
    layers.append(nn.Flatten(2))
    if kind in ("event", "surrogate"):
        layers.append(snnspx.nn.SRMLinear(features, 10, weight_norm=False, grad=kind))
    else:
        layers += [nn.Linear(features, 10, bias=False), nn.ReLU() if kind == "floor" else LoopSRM()]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # every layer fires: the orthogonal init is small for few inputs
        for p in model.parameters():
            p.mul_(3.0)
    return model


def saved_mib(model: nn.Module, x: torch.Tensor) -> float:
    """MiB of the tensors autograd keeps for the backward of one forward, each storage once
    (parameters and the input are excluded: every network keeps those)."""
    skip = {t.untyped_storage().data_ptr() for t in (x, *model.parameters())}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values()) / 2**20


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    add_keep_freed_memory(p)
    p.add_argument("--net", default="conv", choices=["conv", "digits"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    if args.net == "conv":
        shape = (2, 2, 2, 38, 38) if args.quick else (8, 16, 2, 38, 38)
    else:
        shape = (4, 8, 1, 8, 8) if args.quick else (16, 64, 1, 8, 8)
    spikes = (torch.rand(shape) < 0.2).float().to(args.device)
    labels = torch.randint(0, 10, (shape[1],), device=args.device)
    kinds = {"floor": "no neuron (ReLU): the floor", "event": "snnspx event", "surrogate": "snnspx surrogate",
             "loop": "PyTorch SRM loop (surrogate)"}
    table = Table(f"Network training step and inference ({args.net}, input {list(shape)})",
                  ["threads", "network", "train step (ms)", "x floor", "inference (ms)", "x floor",
                   "kept for backward (MiB)"])
    for threads in args.threads:
        torch.set_num_threads(threads)
        floor = None
        for kind, name in kinds.items():
            model = build(kind, args.net).to(args.device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step():
                out = model(spikes)
                loss = nn.functional.cross_entropy(snnspx.losses.reverse_grad(out.sum(0)) if kind == "event"
                                                   else out.sum(0), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def infer():
                with torch.no_grad():
                    model(spikes)

            train_ms, infer_ms = time_ms(step, args.min_run_time), time_ms(infer, args.min_run_time)
            floor = floor or (train_ms, infer_ms)
            table.add(threads, name, train_ms, f"{train_ms / floor[0]:.2f}x", infer_ms, f"{infer_ms / floor[1]:.2f}x",
                      f"{saved_mib(model, spikes):.1f}")
    allocator = "glibc keeps freed memory (--keep-freed-memory)" if args.keep_freed_memory else "glibc defaults"
    table.emit(args.device, args.write, f"Allocator: {allocator}.")


if __name__ == "__main__":
    main()
