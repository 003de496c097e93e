"""Scale-out: DistributedDataParallel over two CPU processes (gloo) equals one process.

A small snnspx network (SRMConv2d, a 1x1 convolution to currents, the fused SRM +
superpixel pooling head SRMSupPixPool) trains a few SGD steps on a fixed global batch,
split in halves across two ranks. At every step the gradients that DDP averaged, and the
parameters after the last step, must equal those of one process that sees the whole batch.
That holds because every sample's forward and backward is independent of the others in
the batch (no batch statistics), and each rank's loss is the mean over its half: the
average of the two halves' gradients is the whole batch's.

Both the ``torch`` and the ``cpp`` backend run in the same two processes (one spawn: the
start-up is most of the time). For ``cpp`` the parent builds (or loads) the CPU library
first, so each spawned process only loads the cached build.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import snnspx
from snnspx.losses import reverse_grad
from snnspx.superpixels import grid_superpixels

WORLD = 2
T, B, C_IN, H, W = 8, 4, 2, 8, 8
STEPS = 3
TIMEOUT_S = 120


class Net(nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.conv = snnspx.nn.SRMConv2d(C_IN, 4, 3, padding=1, backend=backend)
        self.head = nn.Conv2d(4, 3, 1, bias=False)
        self.pool = snnspx.nn.SRMSupPixPool(mode="avg", num_superpixels=4, backend=backend)
        with torch.no_grad():
            self.conv.weight.mul_(2.0)
            self.head.weight.normal_(0.5, 0.2)

    def forward(self, spikes, labels):
        s = self.conv(spikes)
        s = reverse_grad(s)  # count gradient -> spike-time gradient for SRMConv2d (same value)
        currents = self.head(s.flatten(0, 1)).unflatten(0, s.shape[:2])
        return self.pool(currents, labels)  # [T, B, 3, K]


def data():
    """The fixed global batch: spikes [T, B, C_IN, H, W], labels [H, W] (K = 4), targets [B, 3, 4]."""
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(T, B, C_IN, H, W, generator=g) < 0.4).double()
    target = torch.rand(B, 3, 4, generator=g, dtype=torch.float64) * 0.5
    return spikes, grid_superpixels(H, W, 4), target


def make_net(backend: str) -> Net:
    torch.manual_seed(1)
    return Net(backend).double()


def loss_fn(pooled, target):
    rate = pooled.mean(0)  # [b, 3, K]: spikes per pixel per step
    rate = reverse_grad(rate)  # the spike-time gradient convention (snnspx.losses)
    return nn.functional.mse_loss(rate, target)


def train(model, params, spikes, labels, target):
    """STEPS SGD steps; returns the gradients of every step."""
    opt = torch.optim.SGD(params, lr=0.5)
    grads = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model(spikes, labels), target).backward()
        grads.append([p.grad.detach().clone() for p in params])
        opt.step()
    return grads


def fused_backward_kernels(fn) -> list[str]:
    """Which kernel served each call of the fused op's backward in fn() (see
    conftest.kernels_run: "compiled" or "torch")."""
    from conftest import kernels_run

    return kernels_run(fn).get("snnspx::srm_suppix_pool_bwd", [])


def _worker(rank: int, port: int, out_dir: str, backends: list[str]) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        spikes, labels, target = data()
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)  # this rank's samples (dim 1 of spikes)
        results = {}
        for backend in backends:
            net = make_net(backend)
            model = DDP(net)
            params = list(net.parameters())
            out = []
            calls = fused_backward_kernels(
                lambda: out.append(train(model, params, spikes[:, part], labels, target[part])))
            results[backend] = {
                "grads": out[0],
                "params": [p.detach().clone() for p in params],
                "calls": calls,
                "cpu_kernel": torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_suppix_pool_bwd", "CPU"),
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalization: with gloo, a rank sometimes aborts there
    # ("terminate called without an active exception", seen with torch 2.14.1 on CPU, with
    # the torch backend too, i.e. in PyTorch, not in snnspx) after its work is done.
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backends() -> list[str]:
    out = ["torch"]
    if snnspx.backends()["cpp"].available:  # builds or loads the CPU library here, before the spawn
        out.append("cpp")
    return out


@pytest.fixture(scope="module")
def ddp_results():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    backends = _backends()
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_worker, args=(_free_port(), out_dir, backends), nprocs=WORLD,
                                 join=False, start_method="spawn")
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):  # raises if a rank failed
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the DDP ranks did not finish in {TIMEOUT_S} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return backends, [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_ddp_matches_single_process(backend, ddp_results):
    backends, ranks = ddp_results
    if backend not in backends:
        pytest.skip(f"the {backend!r} backend is not available here")
    torch.set_num_threads(1)
    spikes, labels, target = data()
    net = make_net(backend)
    params = list(net.parameters())
    grads = train(net, params, spikes, labels, target)
    assert all(g.abs().sum() > 0 for g in grads[0]), "every parameter should get a gradient"
    for r, res in enumerate(ranks):
        got = res[backend]
        for step, (g_ddp, g_one) in enumerate(zip(got["grads"], grads)):
            for i, (a, b) in enumerate(zip(g_ddp, g_one)):
                torch.testing.assert_close(a, b, msg=lambda m: f"rank {r}, step {step}, parameter {i}: {m}")
        for a, b in zip(got["params"], params):
            torch.testing.assert_close(a, b.detach())
        kind = "compiled" if backend == "cpp" else "torch"
        assert got["calls"] == [kind] * STEPS, f"each rank should run the {kind} fused backward once per step"
        if backend == "cpp":  # the compiled kernel is registered, so the dispatcher picks it
            assert got["cpu_kernel"]
