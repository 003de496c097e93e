"""SRM neuron in surrogate-gradient mode: a training step (forward + backward) of the snnspx
kernels against the op's PyTorch kernel (a vectorised loop over T) and against SpikingJelly's
multi-step LIF neuron on the CPU (its PyTorch loop), at the same neuron-steps, at 1 and 2
threads. Also the bytes autograd keeps for the backward per neuron-step.

Shape (the CPU rows of bench_srm.py): T,B,C,H,W = 16,4,32,32,32; GPU 16,16,64,64,64.

SpikingJelly is optional and never a dependency of snnspx; to include it without touching the
environment:  pip install --no-deps --target /tmp/sj spikingjelly loguru
then run with PYTHONPATH=/tmp/sj.

    python benchmarks/bench_surrogate.py [--device cpu|cuda] [--threads 1,2] [--write]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, add_keep_freed_memory, keep_freed_memory, parser, time_ms  # noqa: E402

import snnspx  # noqa: E402
from snnspx import functional as F  # noqa: E402


def spikingjelly_lif():
    """SpikingJelly's multi-step LIF (sigmoid surrogate, alpha 4, hard reset), or None."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError:
        return None
    return neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=False)


def cpu_time_ms(fn, min_run_time: float) -> float:
    """Median process CPU time of fn() in ms, over runs of about min_run_time seconds in all.
    On a shared machine it moves less than wall time (time slices taken by other processes
    do not count); with several threads it is their sum, not the elapsed time."""
    fn()
    times, spent = [], 0.0
    while spent < min_run_time or len(times) < 5:
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
        spent += times[-1]
    return sorted(times)[len(times) // 2] * 1e3


def saved_bytes_per_step(run, x: torch.Tensor) -> float:
    """Bytes of the tensors autograd saves while run(x) builds its graph, per neuron-step."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(x.detach().requires_grad_())
    return sum(sizes) / x.numel()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (CPU)")
    p.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time (CPU)")
    add_keep_freed_memory(p)
    args = p.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    dev = args.device
    shape = (16, 16, 64, 64, 64) if dev == "cuda" else (16, 4, 32, 32, 32)
    if args.quick:
        shape = (8, 2, 4, 8, 8)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) + 0.5).to(dev).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(dev)
    kernel = "cuda" if dev == "cuda" else "cpp"
    lif = spikingjelly_lif()
    if lif is not None:
        lif = lif.to(dev)

    def neuron(backend):
        return lambda xx: F.srm_neuron_surrogate(xx, backend=backend)

    C = shape[2]
    tau_m = torch.full((C,), 5.0, device=dev, requires_grad=True)
    v_th = torch.ones(C, device=dev, requires_grad=True)

    def learnable(backend):  # per-channel tau_m and v_th that need gradients
        return lambda: torch.autograd.grad(F.srm_neuron_surrogate(x, tau_m=tau_m, v_th=v_th, backend=backend),
                                           (x, tau_m, v_th), grad)

    def lif_run(xx):
        lif.reset()
        return lif(xx)

    def step(run):  # one training step of the neuron: forward, then dL/dx for dL/dspikes = grad
        return lambda: torch.autograd.grad(run(x), x, grad)

    t = Table(
        f"SRM neuron, surrogate gradient (sigmoid), {dev}, T,B,C,H,W = {','.join(map(str, shape))}"
        + (", process CPU time" if args.cpu_time else ""),
        ["pass", "threads", "baseline", "baseline (ms)", "snnspx (ms)", "speed-up"],
    )
    threads = [int(n) for n in args.threads.split(",")] if dev == "cpu" else [torch.get_num_threads()]
    for n in threads:
        torch.set_num_threads(n)
        timer = cpu_time_ms if args.cpu_time else time_ms
        run = lambda f: timer(f, args.min_run_time)  # noqa: E731
        k_fwd = run(lambda: F.srm_neuron_surrogate(x.detach(), backend=kernel))
        t_fwd = run(lambda: F.srm_neuron_surrogate(x.detach(), backend="torch"))
        k_step = run(step(neuron(kernel)))
        t_step = run(step(neuron("torch")))
        t.add("forward (inference)", n, "PyTorch kernel (loop over T)", t_fwd, k_fwd, f"{t_fwd / k_fwd:.1f}x")
        t.add("forward+backward", n, "PyTorch kernel (loop over T)", t_step, k_step, f"{t_step / k_step:.1f}x")
        k_learn, t_learn = run(learnable(kernel)), run(learnable("torch"))
        t.add("forward+backward, learnable per-channel tau_m and v_th", n, "PyTorch kernel (loop over T)", t_learn,
              k_learn, f"{t_learn / k_learn:.1f}x")
        if lif is not None:
            sj_step = run(step(lif_run))
            t.add("forward+backward", n, "SpikingJelly LIFNode, multi-step", sj_step, k_step, f"{sj_step / k_step:.1f}x")
    saved = {name: saved_bytes_per_step(r, x) for name, r in (
        (kernel, neuron(kernel)), ("torch", neuron("torch")), ("SpikingJelly", lif_run if lif is not None else None))
        if r is not None}
    notes = "Saved for backward per neuron-step: " + ", ".join(f"{v:.1f} bytes ({k})" for k, v in saved.items()) + "."
    if lif is None:
        notes += " SpikingJelly not installed: its rows are missing."
    else:
        from importlib.metadata import version

        notes += f" SpikingJelly {version('spikingjelly')} (LIF: one state variable; SRM: three)."
    t.emit(dev, args.write, notes)


if __name__ == "__main__":
    main()
