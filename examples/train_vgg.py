"""The original's CIFAR-10 VGG, built from snnspx layers, trained a few steps on 32 x 32 images.

    python examples/train_vgg.py --ci               # CI size: widths / 16, batch 4, 8 steps (seconds)
    python examples/train_vgg.py                    # full width, batch 8, 5 steps (1-4 minutes on 2 cores)
    python examples/train_vgg.py --width 4 --steps 20 --batch-size 16

The layer list of the original's CIFAR-10 network (``networks/CIFAR10.yaml`` of the SRM
code), on ``[T, B, ...]`` spikes with ``T = 12``, every synaptic layer an SRM layer with
``tau_m = 7, tau_s = 4, tau_grad = 3.5``, threshold 1 and standardised weights::

    [T, B, 3, 32, 32]
    conv 128, conv 128                  3x3, padding 1    [T, B, 128, 32, 32]
    pool 2, dropout 0.1                                   [T, B, 128, 16, 16]
    conv 256, conv 256, conv 256                          [T, B, 256, 16, 16]
    pool 2, dropout 0.1                                   [T, B, 256, 8, 8]
    conv 512, conv 512, conv 512                          [T, B, 512, 8, 8]
    pool 2, dropout 0.1, flatten                          [T, B, 8192]
    FC 2048, dropout 0.1, FC 2048, dropout 0.1, FC 10     [T, B, 10]

(``--width k`` divides every channel and FC width by k; ``--ci`` is ``--width 16``.) Pools are
:class:`snnspx.nn.SpikeAvgPool2d`, dropouts :class:`snnspx.nn.SpikeDropout` (one mask per
sample and channel, kept for all steps, as the original's). The loss is the original's:
:class:`snnspx.losses.SpikeCountLoss` with 10 spikes desired from the true class and at most 1
from the others. Before training, :func:`snnspx.init.rate_init` scales each layer on the
first batch to about one spike per neuron over the T steps (a fresh deep SRM network is
otherwise silent past its first layers); the script prints each layer's rate.

Data: no download. scikit-learn's bundled handwritten digits (``load_digits``, 8 x 8,
labels 0-9), each image upsampled to 32 x 32 (bilinear) and repeated over 3 channels:
CIFAR-10's input shape with ten real classes. The images enter as constant currents at
every step (the original's direct encoding). Optimizer: Adam on the weights (``--lr``, 1e-4;
1e-3 at the CI size, whose narrower layers move less per step), ``bn_weight`` and ``bn_bias``
fixed at rate_init's scale as in the original (which trains with SGD, lr 0.05, batch 50, for
500 epochs: at these few steps and small batches it overshoots).

Every step trains on the same batch: this is a check that the whole network learns (rate
initialisation, spike-time gradients through eleven SRM layers, pools and dropouts), not a
CIFAR training run. Each step prints its training loss (dropout on) and the loss of the batch
after the update with dropout off; the last line says whether that loss fell (the CI test
checks that it does).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

# (kind, value): "conv" out channels, "pool", "fc" width; dropout 0.1 after each pool and FC 1-2.
VGG_LAYERS = [("conv", 128), ("conv", 128), ("pool", 2),
              ("conv", 256), ("conv", 256), ("conv", 256), ("pool", 2),
              ("conv", 512), ("conv", 512), ("conv", 512), ("pool", 2),
              ("fc", 2048), ("fc", 2048), ("fc", 10)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ci", action="store_true", help="CI size: --width 16 --steps 8 --batch-size 4 --lr 1e-3")
    p.add_argument("--width", type=int, default=None, help="divide channel and FC widths by this (default 1, 16 with --ci)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 5, 8 with --ci)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 8, 4 with --ci)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-4, 1e-3 with --ci)")
    p.add_argument("--T", type=int, default=12, help="time steps (default %(default)s, the original's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default=None, choices=["cuda", "cpp", "torch"], help="force an SRM backend")
    return p.parse_args(argv)


def make_vgg(width: int = 1, in_channels: int = 3, size: int = 32, backend: str | None = None) -> nn.Sequential:
    """The layer list above with every width divided by `width` (the 10 outputs stay 10)."""
    import snnspx

    params = snnspx.SRMParams(tau_m=7.0, tau_s=4.0, tau_grad=3.5, v_th=1.0)
    layers: list[nn.Module] = []
    c, n_fc = in_channels, sum(kind == "fc" for kind, _ in VGG_LAYERS)
    fc_seen = 0
    for kind, v in VGG_LAYERS:
        if kind == "conv":
            out = max(v // width, 1)
            layers.append(snnspx.nn.SRMConv2d(c, out, 3, padding=1, params=params, weight_norm=True, backend=backend))
            c = out
        elif kind == "pool":
            layers += [snnspx.nn.SpikeAvgPool2d(v), snnspx.nn.SpikeDropout(0.1)]
            size //= v
        else:
            if fc_seen == 0:
                layers.append(nn.Flatten(start_dim=2))
                c = c * size * size
            fc_seen += 1
            out = v if fc_seen == n_fc else max(v // width, 2)
            layers.append(snnspx.nn.SRMLinear(c, out, params=params, backend=backend))
            if fc_seen < n_fc:
                layers.append(snnspx.nn.SpikeDropout(0.1))
            c = out
    return nn.Sequential(*layers)


def load_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits as ``[n, 3, 32, 32]`` in [0, 1] (bilinear 8 -> 32, grey to RGB) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(seed))[:n]
    x = torch.tensor(digits.images, dtype=torch.float32)[idx, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.tensor(digits.target, dtype=torch.int64)[idx]


def main(argv=None) -> int:
    import snnspx

    args = parse_args(argv)
    width = args.width or (16 if args.ci else 1)
    steps = args.steps or (8 if args.ci else 5)
    batch = args.batch_size or (4 if args.ci else 8)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    torch.manual_seed(args.seed)
    T = args.T
    x, labels = load_images(batch, args.seed)
    x = x.to(device).unsqueeze(0).expand(T, *x.shape).contiguous()   # [T, B, 3, 32, 32] currents
    labels = labels.to(device)

    net = make_vgg(width, backend=args.backend).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"VGG (widths / {width}), T = {T}, batch {batch}, {steps} steps, {n_params:,} parameters, "
          f"device {device}, {torch.get_num_threads()} thread(s); data: sklearn digits upsampled to 3 x 32 x 32")

    t0 = time.perf_counter()
    report = snnspx.init.rate_init(net, x, target=1.0)
    print(f"rate_init on the first batch ({time.perf_counter() - t0:.1f} s), spikes per neuron over T after scaling:")
    for r in report:
        print(f"  layer {r.name:>2} {type(net[int(r.name)]).__name__:9} scale {r.scale:7.3g}  rate {r.rate:.3f}")

    loss_fn = snnspx.losses.SpikeCountLoss(desired_count=10, undesired_count=1)
    # bn_weight and bn_bias keep the scale rate_init set, as in the original (its norm_grad = 0);
    # the weights learn.
    weights = [p for name, p in net.named_parameters() if not name.rsplit(".", 1)[-1].startswith("bn_")]
    opt = torch.optim.Adam(weights, lr=args.lr or (1e-3 if args.ci else 1e-4))
    def batch_loss() -> float:
        """The loss of the batch with dropout off."""
        net.eval()
        with torch.no_grad():
            value = loss_fn(net(x), labels).item()
        net.train()
        return value

    fixed = [batch_loss()]
    print(f"step 0: loss of the batch without dropout {fixed[0]:.4f}")
    for step in range(steps):
        t1 = time.perf_counter()
        out = net(x)                                   # [T, B, 10]
        loss = loss_fn(out, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        fixed.append(batch_loss())
        print(f"step {step + 1}: loss {loss.item():.4f} (dropout on), output rate {out.mean().item():.3f}; "
              f"after the step, without dropout: {fixed[-1]:.4f} ({time.perf_counter() - t1:.2f} s)", flush=True)
    first, last = fixed[0], fixed[-1]
    print(f"loss of the batch without dropout: {first:.4f} -> {last:.4f} "
          f"({'falling' if last < first else 'not falling'}) in {steps} steps, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - one clear line and a non-zero status
        import traceback

        traceback.print_exc()
        print(f"train_vgg.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
