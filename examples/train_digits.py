"""Train a small SRM network on scikit-learn's handwritten digits with the event-driven gradient.

    python examples/train_digits.py                  # seeds 0 1 2, 20 epochs each: mean test accuracy
    python examples/train_digits.py --compare        # the same, then a surrogate-gradient LIF network
    python examples/train_digits.py --small          # CI size: a subset, 3 epochs, seconds
    python examples/train_digits.py --seeds 1 --epochs 30 --loss count
    python examples/train_digits.py --grad surrogate --learn-tau   # surrogate gradient, learned time constants
    python examples/train_digits.py --grad surrogate --learn-tau --lr 3e-3 --label-smoothing 0  # event mode's recipe

Data: ``sklearn.datasets.load_digits`` (1797 greyscale 8 x 8 images of the digits 0-9, shipped
with scikit-learn: no download), split 80 / 20 into training and test sets, stratified, with
the seed of the run. Each image reaches the network as a constant input current at every one
of the T steps (``--encoding direct``, the original's for static images); ``--encoding
poisson`` draws rate spikes instead.

Network, on ``[T, B, ...]`` tensors::

    image [1, 8, 8] --T steps--> [T, B, 1, 8, 8]
      -> SRMConv2d(1, 16, 3, padding=1, weight_norm=True)   [T, B, 16, 8, 8]
      -> SpikeAvgPool2d(2)                                  [T, B, 16, 4, 4]
      -> flatten (-> SpikeDropout with --dropout)            [T, B, 256]
      -> SRMLinear(256, 10)  (weight_norm by default)        [T, B, 10]   one neuron per class

Loss and readout
----------------
The prediction is the class whose output neuron fires most (ties go to the one that fired
first). The default loss is the cross-entropy of the spike counts taken as logits,
``F.cross_entropy(reverse_grad(spikes).sum(0), labels)``. snnspx's SRM layers train with
the original's spike-*time* gradient (docs/maths.md §3): the gradient that reaches an output
spike is read as dL/d(spike time), and a loss on counts has the opposite sign (more spikes
need earlier spikes). :func:`snnspx.losses.reverse_grad` is the adapter: identity forward,
gradient negated. ``--loss count`` uses the original's count loss instead,
:class:`snnspx.losses.SpikeCountLoss` (``--desired`` spikes for the true class, at least;
``--undesired`` for the others, at most); it reverses the gradient itself.

Initialisation (why every neuron fires at the start)
-----------------------------------------------------
The event-driven gradient lives on spikes: a neuron that is silent for every image gets no
gradient and never learns. Both layers standardise their weights (``weight_norm``: per
output unit, mean ``bn_bias``, standard deviation ``bn_weight``). Before training,
``bn_bias`` is set to ``--bias-init`` (0.5) times ``bn_weight``, a positive mean weight
that every neuron shares, so that each one fires for most images whatever the random
pattern of its weights; then :func:`snnspx.init.rate_init` scales each layer, on the first
training batch, to about ``--init-target`` spikes per neuron. ``bn_bias`` stays fixed
during training (a learnt shift of all weights at once is the quickest way to silence a
neuron; the original also trains these parameters slowly or not at all); ``weight`` and
``bn_weight`` learn (Adam, cosine learning-rate decay). With ``--grad surrogate`` the SRM
layers train by backpropagation through time with a surrogate spike derivative: silent
neurons get a gradient there, so ``bn_bias`` starts at 0 and learns, and the count loss
takes no reversal. Its recipe differs from the event mode's in two defaults, learning rate
1e-2 (not 3e-3) and label smoothing 0.2 (not 0): with the event mode's, it fits the
training set (training accuracy 0.999 within 20 epochs) and tests 1-2 % lower.

Measured on the 2-core development CPU, two threads, defaults (20 epochs, seeds 0 1 2): test
accuracy 0.967, 0.986, 0.969 (mean 0.974), 6.5 s per seed; ``--loss count`` 0.953, 0.972, 0.961
(mean 0.962); ``--compare``'s LIF 0.975, 0.981, 0.978 (mean 0.978), 14 s per seed. With
zero-mean weight rows instead (``--bias-init 0``), rate_init left 1-2 of the 10 output neurons
silent for every image, and in most runs tried 1-7 were silent for good after the first epoch
(test accuracy 40-85 %).

Measured on a 2-core AMD EPYC VM on 2026-12-07, ``--grad surrogate --learn-tau`` (seeds 0 1
2): test accuracy 0.994, 0.994, 0.994 (mean 0.994) with two threads, 0.992, 0.992, 0.997
(mean 0.994) with one (``OMP_NUM_THREADS=1``); with the event mode's learning rate and no
smoothing, 0.972, 0.978, 0.986 (mean 0.979) and 0.972, 0.986, 0.989 (mean 0.982). The two
surrogate defaults were chosen on seeds 3-8 (other splits), where they gave a mean of 0.991
against 0.979 (one thread). They cost no time: a seed takes 8.4 s with two threads and 14 s
with one on the idle VM (seed 0, measured again with these defaults).

``--compare`` trains the same architecture built from ``nn.Conv2d``/``nn.Linear`` and a
plain leaky integrate-and-fire neuron written below (Heaviside spikes, arctan surrogate
gradient, ordinary autograd through the time loop), with the same data, encoding, loss on
counts (without the reversal: its gradient is an ordinary one), learning rate, label
smoothing, epochs and seeds, and prints both results side by side.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="one run per seed (split, weights, order, dropout, spikes); default %(default)s")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 20, 3 with --small)")
    p.add_argument("--small", action="store_true", help="CI size: 300 training / 100 test images, 3 epochs")
    p.add_argument("--T", type=int, default=16, help="time steps per image (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate, decayed to 0 (default 3e-3; 1e-2 with --grad surrogate)")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="--loss ce: label smoothing (default 0; 0.2 with --grad surrogate)")
    p.add_argument("--shift", type=int, default=None,
                   help="augmentation: shift each training image by up to this many pixels along each axis, at"
                        " random, zeros filling in (default 0)")
    p.add_argument("--encoding", choices=["direct", "poisson"], default="direct",
                   help="the image as a constant current (default) or as Poisson spikes")
    p.add_argument("--loss", choices=["ce", "count"], default="ce",
                   help="cross-entropy of the counts (default) or the original's SpikeCountLoss")
    p.add_argument("--desired", type=float, default=14.0, help="--loss count: true-class count (default %(default)s)")
    p.add_argument("--undesired", type=float, default=1.0, help="--loss count: other classes' count (default %(default)s)")
    p.add_argument("--init-target", type=float, default=0.5,
                   help="rate_init target, spikes per neuron over T (default %(default)s)")
    p.add_argument("--bias-init", type=float, default=None,
                   help="the shared mean weight, in units of the weights' std (default 0.5; 0 with --grad surrogate,"
                        " whose silent neurons still get a gradient)")
    p.add_argument("--dropout", type=float, default=0.0, help="SpikeDropout before the output layer (default 0)")
    p.add_argument("--fire-if", choices=[">", ">="], default=">", help="the neurons' threshold test (default >)")
    p.add_argument("--grad", choices=["event", "surrogate"], default="event",
                   help="the SRM neurons' gradient: the original's event-driven one (default) or a surrogate")
    p.add_argument("--surrogate", default="atan", choices=["sigmoid", "atan", "fast_sigmoid", "triangle"],
                   help="--grad surrogate: the surrogate derivative (default %(default)s)")
    p.add_argument("--alpha", type=float, default=None,
                   help="--grad surrogate: the surrogate's parameter (default: the library's for that surrogate)")
    p.add_argument("--detach-reset", action="store_true", help="--grad surrogate: no gradient through the reset")
    p.add_argument("--learn-tau", action="store_true", help="--grad surrogate: learn tau_m, tau_s per channel")
    p.add_argument("--learn-threshold", action="store_true", help="--grad surrogate: learn v_th per channel")
    p.add_argument("--compare", action="store_true", help="also train the surrogate-gradient LIF network")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default=None, choices=["cuda", "cpp", "torch"],
                   help="force a backend (default: cpp on CPUs, torch on GPUs)")
    p.add_argument("--quiet", action="store_true", help="no line per epoch")
    return p.parse_args(argv)


def load_data(seed: int, small: bool):
    """(x_train, y_train, x_test, y_test): images [N, 1, 8, 8] in [0, 1], labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    i_train, i_test = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=digits.target)
    if small:
        i_train, i_test = i_train[:300], i_test[:100]
    return x[i_train], y[i_train], x[i_test], y[i_test]


# --------------------------------------------------------------------------- the SRM network
def make_srm_net(args, channels: int = 16) -> nn.Sequential:
    import snnspx

    neuron = dict(fire_if=args.fire_if, backend=args.backend, grad=args.grad)
    if args.grad == "surrogate":
        neuron.update(surrogate=args.surrogate, alpha=args.alpha, detach_reset=args.detach_reset,
                      learn_tau=args.learn_tau, learn_threshold=args.learn_threshold)
    elif args.learn_tau or args.learn_threshold:
        raise ValueError("--learn-tau and --learn-threshold need --grad surrogate")
    layers = [
        snnspx.nn.SRMConv2d(1, channels, 3, padding=1, weight_norm=True, **neuron),  # [T, B, 16, 8, 8]
        snnspx.nn.SpikeAvgPool2d(2),                                                # [T, B, 16, 4, 4]
        nn.Flatten(start_dim=2),                                                    # [T, B, 256]
    ]
    if args.dropout:
        layers.append(snnspx.nn.SpikeDropout(args.dropout))
    layers.append(snnspx.nn.SRMLinear(channels * 16, 10, **neuron))               # [T, B, 10]
    return nn.Sequential(*layers)


def _bias_init(args) -> float:
    if args.bias_init is not None:
        return args.bias_init
    return 0.0 if args.grad == "surrogate" else 0.5


def init_srm_net(net: nn.Sequential, batch: torch.Tensor, args) -> list:
    """The shared positive mean weight, then rate_init; returns rate_init's report."""
    import snnspx

    layers = [m for m in net if isinstance(m, (snnspx.nn.SRMConv2d, snnspx.nn.SRMLinear))]
    with torch.no_grad():
        for m in layers:
            m.bn_bias.copy_(_bias_init(args) * m.bn_weight)
    report = snnspx.init.rate_init(net, batch, target=args.init_target)
    for m in layers:
        m.bn_bias.requires_grad_(args.grad == "surrogate")  # event mode: fixed, see the module docstring
    return report


# --------------------------------------------------------------------------- the LIF network
class ATanSpike(torch.autograd.Function):
    """Heaviside forward ``v > 0``; backward the derivative of ``atan(pi/2 * alpha * v) / pi + 1/2``."""

    @staticmethod
    def forward(ctx, v, alpha: float):
        ctx.save_for_backward(v)
        ctx.alpha = alpha
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * v) ** 2), None


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons over ``[T, B, ...]`` currents, reset to 0 after a spike.

    ``v[t] = beta * v[t-1] * (1 - s[t-1]) + x[t]``, ``s[t] = H(v[t] - v_th)``, ``beta = 1 - 1/tau``;
    autograd runs through the loop, the spike's derivative is the arctan surrogate.
    """

    def __init__(self, tau: float = 5.0, v_th: float = 1.0, alpha: float = 2.0):
        super().__init__()
        self.beta, self.v_th, self.alpha = 1.0 - 1.0 / tau, v_th, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            v = self.beta * v + x[t]
            s = ATanSpike.apply(v - self.v_th, self.alpha)
            v = v * (1 - s.detach())  # reset; the surrogate path goes through s alone
            out.append(s)
        return torch.stack(out)


class PerStep(nn.Module):
    """Applies a per-image module to every step of ``[T, B, ...]``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


def make_lif_net(args, channels: int = 16) -> nn.Sequential:
    import snnspx

    layers = [PerStep(nn.Conv2d(1, channels, 3, padding=1, bias=False)), LIF(),
              PerStep(nn.AvgPool2d(2)), nn.Flatten(start_dim=2)]
    if args.dropout:
        layers.append(snnspx.nn.SpikeDropout(args.dropout))
    layers += [nn.Linear(channels * 16, 10, bias=False), LIF()]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- training
def predict(out: torch.Tensor) -> torch.Tensor:
    """Class per sample from output spikes [T, B, 10]: most spikes, ties to the earliest first spike."""
    T = out.shape[0]
    count = out.sum(0)
    fired = out > 0
    first = torch.where(fired.any(0), fired.float().argmax(0), torch.full_like(count, T, dtype=torch.long))
    return (count * (T + 1) + (T - first)).argmax(1)


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Images [B, 1, H, W], each moved by its own random offset in [-shift, shift] along each
    axis; the pixels moved in are 0 (the digits' background)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, B, 1), generator=gen)
    rows = (dy + torch.arange(H))[:, :, None]                           # [B, H, 1]
    cols = (dx + torch.arange(W))[:, None, :]                           # [B, 1, W]
    return padded[torch.arange(B)[:, None, None], 0, rows, cols].unsqueeze(1)


def run(kind: str, seed: int, args, device) -> float:
    """Trains one network ("srm" or "lif") with one seed; returns its final test accuracy."""
    import snnspx
    from snnspx.encoding import poisson_encode

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, x_test, y_test = load_data(seed, args.small)
    T = args.T

    def encode(x: torch.Tensor) -> torch.Tensor:
        if args.encoding == "poisson":
            return poisson_encode(x, T, generator=gen).to(device)
        return x.to(device).unsqueeze(0).expand(T, *x.shape).contiguous()

    order = torch.randperm(len(y_train), generator=gen)
    if kind == "srm":
        net = make_srm_net(args).to(device)
        report = init_srm_net(net, encode(x_train[order[:args.batch_size]]), args)
        init_line = ", ".join(f"layer {r.name}: x{r.scale:.3g} -> {r.rate:.2f} spikes" for r in report)
    else:
        net = make_lif_net(args).to(device)
        init_line = "PyTorch default init"
    # The SRM layers take dL/d(spike time), so a loss on counts reaches them reversed
    # (reverse_grad; SpikeCountLoss reverses by default); the LIF's surrogate gradient is an
    # ordinary dL/dspikes and takes the loss as it is.
    reverse = kind == "srm" and args.grad == "event"
    if args.loss == "count":
        loss_fn = snnspx.losses.SpikeCountLoss(desired_count=args.desired, undesired_count=args.undesired,
                                               reverse=reverse)
    else:
        def loss_fn(out, labels):
            return F.cross_entropy((snnspx.losses.reverse_grad(out) if reverse else out).sum(0), labels,
                                   label_smoothing=args.label_smoothing)

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    steps = args.epochs * math.ceil(len(y_train) / args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    def evaluate() -> float:
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y_test), 256):
                out = net(encode(x_test[i:i + 256]))
                correct += (predict(out).cpu() == y_test[i:i + 256]).sum().item()
        net.train()
        return correct / len(y_test)

    t0 = time.perf_counter()
    if not args.quiet:
        print(f"[{kind} seed {seed}] {len(y_train)} training / {len(y_test)} test images; init: {init_line}")
    acc = 0.0
    for epoch in range(1, args.epochs + 1):
        if epoch > 1:
            order = torch.randperm(len(y_train), generator=gen)
        total_loss = correct = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            labels = y_train[idx].to(device)
            images = x_train[idx]
            if args.shift:
                images = random_shift(images, args.shift, gen)
            out = net(encode(images))                        # [T, B, 10] output spikes
            loss = loss_fn(out, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            correct += (predict(out.detach()) == labels).sum().item()
        acc = evaluate()
        if not args.quiet:
            print(f"[{kind} seed {seed}] epoch {epoch}: train loss {total_loss / len(y_train):.3f}, train accuracy "
                  f"{correct / len(y_train):.3f}, test accuracy {acc:.3f} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    with torch.no_grad():
        net.eval()
        rate = net(encode(x_test[:64])).mean().item()
    print(f"{kind} seed {seed}: test accuracy {acc:.4f} after {args.epochs} epoch(s), output rate {rate:.3f} "
          f"spikes / neuron / step, {time.perf_counter() - t0:.1f} s", flush=True)
    return acc


def summary(name: str, seeds: list[int], accs: list[float], seconds: float) -> str:
    mean = statistics.fmean(accs)
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return (f"{name}: mean test accuracy {mean:.4f} over seeds {' '.join(map(str, seeds))} "
            f"(min {min(accs):.4f}, max {max(accs):.4f}, std {std:.4f}; {seconds:.0f} s)")


def resolve_defaults(args) -> None:
    """The options left at None take their mode's default (see --help)."""
    if args.epochs is None:
        args.epochs = 3 if args.small else 20
    # The surrogate recipe, chosen on seeds 3-8 (splits other than the reported 0-2's): at
    # lr 3e-3 it fits the training set (accuracy 0.999) and tests 1-2 % lower; a higher
    # learning rate and label smoothing generalised better than shifts, dropout, more
    # epochs, another surrogate or alpha.
    surrogate = args.grad == "surrogate"
    if args.lr is None:
        args.lr = 1e-2 if surrogate else 3e-3
    if args.label_smoothing is None:
        args.label_smoothing = 0.2 if surrogate else 0.0
    if args.shift is None:
        args.shift = 0


def main(argv=None) -> int:
    args = parse_args(argv)
    resolve_defaults(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    print(f"digits: T = {args.T}, {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, loss {args.loss}, "
          + (f"label smoothing {args.label_smoothing}, " if args.label_smoothing and args.loss == "ce" else "")
          + (f"shifts up to {args.shift} px, " if args.shift else "")
          + f"encoding {args.encoding}, device {device}, backend {args.backend or 'default'}, "
          f"{torch.get_num_threads()} thread(s)")
    results = {}
    kinds = ["srm", "lif"] if args.compare else ["srm"]
    for kind in kinds:
        t0 = time.perf_counter()
        accs = [run(kind, seed, args, device) for seed in args.seeds]
        results[kind] = (accs, time.perf_counter() - t0)
    grad = "event-driven gradient" if args.grad == "event" else f"{args.surrogate} surrogate gradient" + (
        ", learned tau" if args.learn_tau else "") + (", learned v_th" if args.learn_threshold else "")
    names = {"srm": f"snnspx SRM ({grad})", "lif": "PyTorch LIF (surrogate gradient)"}
    for kind in kinds:
        print(summary(names[kind], args.seeds, *results[kind]))
    if args.compare:
        print("\nseed | snnspx SRM | PyTorch LIF")
        for i, seed in enumerate(args.seeds):
            print(f"{seed:4d} | {results['srm'][0][i]:10.4f} | {results['lif'][0][i]:11.4f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - one clear line and a non-zero status
        import traceback

        traceback.print_exc()
        print(f"train_digits.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
