"""snnspx end to end on a real image: SLIC superpixels, spikes, SRM layers, fused pooling.

    python examples/superpixel_snn.py                   # 128 x 128, T = 16 (under a minute on 2 CPU cores)
    python examples/superpixel_snn.py --small           # CI size: 32 x 32, T = 8, a few seconds
    python examples/superpixel_snn.py --device cuda --out demo.png

Stages, each with a progress line and its time:

1. the kernels: ``snnspx.backends()`` builds (first run) or loads (cached) the compiled
   libraries and says which backends can run here;
2. the image: scikit-image's astronaut photograph, downscaled;
3. SLIC superpixels (``skimage.segmentation.slic``), renumbered ``0..K-1`` with
   :func:`snnspx.superpixels.relabel_sequential`;
4. Poisson spikes of the RGB image, ``[T, 1, 3, H, W]`` (:func:`snnspx.encoding.poisson_encode`);
5. forward: two ``SRMConv2d`` layers, a 1x1 convolution to currents, and the fused SRM neuron +
   superpixel average pooling ``SRMSupPixPool`` -> firing rate per superpixel ``[T, 1, C, K]``;
6. backward: a loss on the pooled firing rates (each superpixel should fire at the mean
   brightness of its pixels), gradients for every weight; then ``--steps`` Adam steps;
7. the figure: spike raster, firing-rate curves per layer, superpixel firing map.

The loss is written on firing *rates*, which are spike counts; the SRM layers train with
a spike-*time* gradient, so the rate reaches them with its gradient sign flipped (the value
is unchanged): more spikes means earlier spikes. See examples/train_digits.py and
docs/getting-started.md for why.

Exits with status 1 (and a message) if a stage fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CI size: 32 x 32 image, T = 8, 2 training steps")
    p.add_argument("--out", default="superpixel_snn.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default=None, choices=["cuda", "cpp", "torch"],
                   help="force a backend (default: cuda on GPUs, cpp on CPUs, torch if the compiler fails)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 128, 32 with --small)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps after the first backward (default 12, 2 with --small)")
    p.add_argument("--T", type=int, default=None, help="time steps (default 16, 8 with --small)")
    p.add_argument("--segments", type=int, default=None, help="SLIC n_segments (default 150, 24 with --small)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Stages:
    """Numbered progress lines with the time each stage took."""

    def __init__(self, total: int):
        self.total, self.n, self.times = total, 0, {}

    def run(self, name: str, fn):
        self.n += 1
        print(f"[{self.n}/{self.total}] {name} ...", flush=True)
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.times[name] = dt
        print(f"[{self.n}/{self.total}] {name}: done in {dt:.2f} s", flush=True)
        return out


class Net(nn.Module):
    """Spikes [T, B, 3, H, W] -> SRMConv2d -> SRMConv2d -> 1x1 conv currents -> SRMSupPixPool."""

    def __init__(self, channels: int = 8, out_channels: int = 4, backend: str | None = None):
        super().__init__()
        import snnspx

        self.conv1 = snnspx.nn.SRMConv2d(3, channels, 3, padding=1, backend=backend)
        self.conv2 = snnspx.nn.SRMConv2d(channels, channels, 3, padding=1, backend=backend)
        self.head = nn.Conv2d(channels, out_channels, 1, bias=False)   # the same weights at every step
        self.pool = snnspx.nn.SRMSupPixPool(mode="avg", backend=backend)
        with torch.no_grad():
            # start with every layer firing: the orthogonal init is small for 3 input channels
            self.conv1.weight.mul_(3.0)
            self.conv2.weight.mul_(2.0)
            self.head.weight.normal_(0.3, 0.1)

    def forward(self, spikes, labels, num_superpixels):
        import snnspx

        self.pool.num_superpixels = num_superpixels
        s1 = self.conv1(spikes)
        s2 = self.conv2(s1)
        # nn.Conv2d hands back an ordinary dL/dspikes (a count gradient); SRMConv2d reads the
        # gradient of its output as a spike-time gradient, so flip its sign here (same value).
        s2_in = snnspx.losses.reverse_grad(s2)
        currents = self.head(s2_in.flatten(0, 1)).unflatten(0, s2.shape[:2])   # [T, B, C, H, W]
        return s1, s2, self.pool(currents, labels)                         # pooled: [T, B, C, K]


def main(argv=None) -> int:
    args = parse_args(argv)
    size = args.size or (32 if args.small else 128)
    T = args.T or (8 if args.small else 16)
    steps = args.steps if args.steps is not None else (2 if args.small else 12)
    n_segments = args.segments or (24 if args.small else 150)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    import numpy as np
    from skimage import data, segmentation, transform

    import snnspx
    from snnspx import _build
    from snnspx.encoding import poisson_encode
    from snnspx.superpixels import relabel_sequential

    st = Stages(7)

    # 1. kernels ---------------------------------------------------------------------------
    info = st.run("kernels: build or load the compiled libraries (snnspx.backends())", snnspx.backends)
    for kind in ("cpu", "cuda"):
        secs = _build.build_seconds(kind)
        if secs is not None:
            how = f"compiled on first use in {secs:.1f} s" if secs > 2 else f"loaded from the cache in {secs:.2f} s"
            print(f"      {kind} library: {how}")
    for name, bi in info.items():
        print(f"      backend {name:9s} {'yes' if bi.available else 'no '}  {bi.reason.splitlines()[0][:100]}")
    if args.backend is not None:
        backend = args.backend
    elif device.type == "cuda":
        backend = "cuda" if info["cuda"].available else "torch"
    else:
        backend = "cpp" if info["cpp"].available else "torch"
    if backend in ("cuda", "cpp") and not info[backend].available:
        raise RuntimeError(f"backend {backend!r} cannot run here: {info[backend].reason}")
    print(f"      running on {device} with the {backend!r} backend")

    # 2. image ------------------------------------------------------------------------------
    def load_image():
        img = data.astronaut()                                    # 512 x 512 x 3, uint8
        return transform.resize(img, (size, size), anti_aliasing=True).astype(np.float32)   # [0, 1]

    image = st.run(f"image: scikit-image astronaut, resized to {size} x {size}", load_image)

    # 3. superpixels ------------------------------------------------------------------------
    def superpixels():
        seg = segmentation.slic(image, n_segments=n_segments, compactness=10, start_label=0)
        labels = relabel_sequential(torch.from_numpy(seg).long())   # 0..K-1, no gaps
        return labels, int(labels.max()) + 1

    labels, K = st.run(f"SLIC superpixels (n_segments={n_segments})", superpixels)
    print(f"      K = {K} superpixels, {size * size / K:.0f} pixels each on average")

    # 4. spikes -----------------------------------------------------------------------------
    img_t = torch.from_numpy(image).permute(2, 0, 1).contiguous()    # [3, H, W]
    gen = torch.Generator().manual_seed(args.seed)
    spikes = st.run(f"Poisson encoding, T = {T}", lambda: poisson_encode(img_t, T, generator=gen))
    print(f"      spikes {tuple(spikes.shape)}, input rate {spikes.mean().item():.3f} spikes / pixel / step")
    spikes, labels_d = spikes.to(device), labels.to(device)

    # target: each superpixel's mean brightness, the rate its pooled neurons should fire at
    grey = img_t.mean(0).flatten()
    target = torch.zeros(K).index_add_(0, labels.flatten(), grey) / torch.bincount(labels.flatten(), minlength=K)
    target = target.to(device)

    net = Net(backend=backend).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)

    def loss_of(pooled):
        rate = pooled.mean(dim=(0, 2))[0]         # [K]: spikes per pixel per step, over channels
        rate = snnspx.losses.reverse_grad(rate)   # same value; count gradient -> spike-time gradient
        return nn.functional.mse_loss(rate, target)

    # 5. forward ----------------------------------------------------------------------------
    s1, s2, pooled = st.run("forward: SRMConv2d x 2 -> 1x1 conv -> fused SRMSupPixPool",
                            lambda: net(spikes, labels_d, K))
    print(f"      pooled {tuple(pooled.shape)}; firing rates conv1 {s1.mean().item():.3f}, "
          f"conv2 {s2.mean().item():.3f}, pooled {pooled.mean().item():.3f}")

    # 6. backward ---------------------------------------------------------------------------
    def backward():
        loss = loss_of(pooled)
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.norm().item() for n, p in net.named_parameters()}
        opt.step()
        losses = [loss.item()]
        for _ in range(steps):
            loss = loss_of(net(spikes, labels_d, K)[2])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return grads, losses

    grads, losses = st.run(f"backward: loss on pooled rates, then {steps} Adam step(s)", backward)
    print("      gradient norms: " + ", ".join(f"{n} {g:.3g}" for n, g in grads.items()))
    print("      loss per step: " + " -> ".join(f"{v:.4f}" for v in losses))
    if not all(np.isfinite(g) and g > 0 for g in grads.values()):
        raise RuntimeError(f"a weight got no (or a non-finite) gradient: {grads}")
    if backend in ("cuda", "cpp"):  # one more forward and backward, untimed, counting the ops that run
        with _OpCounter() as ops_seen:
            loss_of(net(spikes, labels_d, K)[2]).backward()
        opt.zero_grad()
        ran = ops_seen.compiled_calls(device)
        print("      compiled kernels run: " + ", ".join(f"{k} x{v}" for k, v in ran.items()))
        if not all(ran.values()):
            raise RuntimeError(f"the {backend!r} kernels did not run: {ran}")

    # 7. figure -----------------------------------------------------------------------------
    with torch.no_grad():
        s1, s2, pooled = net(spikes, labels_d, K)

    def figure():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(10, 8), layout="constrained")
        axes[0, 0].imshow(segmentation.mark_boundaries(image, labels.numpy(), color=(1, 1, 0)))
        axes[0, 0].set_title(f"input {size}x{size}, {K} SLIC superpixels")
        axes[0, 0].axis("off")
        row = size // 2
        snnspx.viz.spike_raster(s1[:, 0, 0, row, :].cpu(), ax=axes[0, 1],
                                title=f"conv1 spikes, channel 0, image row {row}")
        snnspx.viz.firing_rate_curves(
            {"input": spikes.cpu(), "conv1": s1.cpu(), "conv2": s2.cpu(), "pooled (SRMSupPixPool)": pooled.cpu()},
            ax=axes[1, 0], title="firing rate per step",
        )
        rates = pooled[:, 0].mean(dim=(0, 1)).cpu()               # [K], over steps and channels
        snnspx.viz.superpixel_rate_map(image, labels, rates, ax=axes[1, 1], alpha=0.75,
                                       title="pooled firing rate per superpixel")
        fig.suptitle(f"snnspx: SRM layers + fused superpixel pooling ({backend} backend, T = {T})")
        out = os.path.abspath(args.out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        fig.savefig(out, dpi=80 if not args.small else 50)
        plt.close(fig)
        return out

    out = st.run("figure: raster, firing-rate curves, superpixel firing map", figure)
    print(f"      wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB)")
    total = time.perf_counter() - t_start
    print("time per stage: " + ", ".join(f"{k.split(':')[0]} {v:.2f} s" for k, v in st.times.items()))
    print(f"total {total:.1f} s on {device} ({backend} backend)")
    return 0


class _OpCounter(TorchDispatchMode):
    """Counts the snnspx op calls in its block (it runs every op as usual)."""

    NAMES = ("srm_neuron_fwd", "srm_neuron_bwd", "srm_suppix_pool_fwd", "srm_suppix_pool_bwd")

    def __init__(self):
        super().__init__()
        self.calls = dict.fromkeys(self.NAMES, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.namespace == "snnspx" and name in self.calls:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))

    def compiled_calls(self, device: torch.device) -> dict[str, int]:
        """The calls of ops for which the device's compiled library registers a kernel (the
        dispatcher then prefers it to the op's PyTorch kernel)."""
        key = "CUDA" if device.type == "cuda" else "CPU"
        return {f"snnspx::{n}": c if torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{n}", key) else 0
                for n, c in self.calls.items()}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - one clear line and a non-zero status
        import traceback

        traceback.print_exc()
        print(f"superpixel_snn.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
