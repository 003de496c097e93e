"""snnspx.losses against loops written from the original's loss formulas (values and gradients),
their dead zones, the gradient reversal, the reductions, argument checks, and a small SRMLinear
network that learns with SpikeCountLoss and no sign trick of its own."""

from __future__ import annotations

import math

import pytest
import torch

import snnspx
from snnspx import losses as L

DEV = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def spikes_of(gen, shape, p=0.4, dtype=torch.float64, device="cpu"):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) < p).to(dtype).to(device)


def loss_and_grad(fn, spikes, *args, **kw):
    s = spikes.clone().requires_grad_()
    loss = fn(s, *args, **kw)
    loss.backward()
    return loss.detach(), s.grad


# --------------------------------------------------------------------------- oracles
def count_oracle(spikes, labels, desired, undesired, reverse, reduction):
    """The original's loss_count: targets filled with undesired_count, desired_count at the
    label; delta = (count - target) / T, zeroed where target == desired and delta > 0 or
    target == undesired and delta < 0; repeated over T; loss 1/2 sum delta^2; the backward
    hands each step delta, negated with loss_reverse."""
    T, B, N = spikes.shape
    loss, grad = 0.0, torch.zeros(T, B, N, dtype=torch.float64)
    for b in range(B):
        for n in range(N):
            target = desired if n == int(labels[b]) else undesired
            delta = (float(spikes[:, b, n].sum()) - target) / T
            if (target == desired and delta > 0) or (target == undesired and delta < 0):
                delta = 0.0
            for t in range(T):
                loss += 0.5 * delta**2
                grad[t, b, n] = -delta if reverse else delta
    div = B if reduction == "mean" else 1
    return loss / div, grad / div


def psp_loop(x, tau_s):
    """The original's psp(): syn = syn * (1 - 1/tau_s) + x[t]; psp[t] = syn / tau_s."""
    out = torch.zeros_like(x)
    syn = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        syn = syn * (1 - 1 / tau_s) + x[t]
        out[t] = syn / tau_s
    return out


def kernel_oracle(spikes, target, tau_s, reverse, reduction):
    """The original's spike_kernel: 1/2 sum psp(out - target)^2, autograd's gradient through
    the loop, negated with loss_reverse."""
    s = spikes.detach().double().clone().requires_grad_()
    loss = 0.5 * psp_loop(s - target.double(), tau_s).square().sum()
    if reduction == "mean":
        loss = loss / spikes.shape[1]
    loss.backward()
    return loss.detach(), (-s.grad if reverse else s.grad)


def tet_oracle(spikes, labels, reverse):
    """Cross-entropy of each step's spikes as logits, mean over T * B; gradient
    (softmax - onehot) / (T * B), negated with loss_reverse."""
    T, B, N = spikes.shape
    loss, grad = 0.0, torch.zeros(T, B, N, dtype=torch.float64)
    for t in range(T):
        for b in range(B):
            z = [float(v) for v in spikes[t, b]]
            m = max(z)
            tot = sum(math.exp(v - m) for v in z)
            y = int(labels[b])
            loss += -(z[y] - m - math.log(tot)) / (T * B)
            for n in range(N):
                g = (math.exp(z[n] - m) / tot - (n == y)) / (T * B)
                grad[t, b, n] = -g if reverse else g
    return loss, grad


def timing_oracle(spikes, target, labels, reduction):
    """The original's loss_spike_timing: per neuron, the k-th spike's step (from 1) or T + 1;
    delta = (t_out - t_tar + 0.5) / T, zeroed where the true class has delta < 0 or another
    class delta > 0; loss 1/2 sum delta^2; the k-th output spike gets delta[k], slots with
    t_out > T nothing."""
    T, B, N = spikes.shape
    loss, grad = 0.0, torch.zeros(T, B, N, dtype=torch.float64)
    zones = set()
    for b in range(B):
        for n in range(N):
            out_steps = [t + 1 for t in range(T) if spikes[t, b, n] != 0]
            tar_steps = [t + 1 for t in range(T) if target[t, b, n] != 0]
            for k in range(T):
                t_out = out_steps[k] if k < len(out_steps) else T + 1
                t_tar = tar_steps[k] if k < len(tar_steps) else T + 1
                delta = (t_out - t_tar + 0.5) / T
                correct = n == int(labels[b])
                if (correct and delta < 0) or (not correct and delta > 0):
                    zones.add(("dead", correct))
                    delta = 0.0
                elif t_out <= T:
                    zones.add(("active", correct))
                loss += 0.5 * delta**2
                if t_out <= T:
                    grad[out_steps[k] - 1, b, n] = delta
    div = B if reduction == "mean" else 1
    return loss / div, grad / div, zones


def original_targets(T, labels, N):
    """The original script's target trains: one spike every other step for the true class
    (T >= 8; an extra leading 0 for odd T), no spikes for the others."""
    if T >= 8:
        pattern = torch.tensor([0.0, 1.0]).repeat(T // 2)
        if T % 2:
            pattern = torch.cat([torch.zeros(1), pattern])
    else:
        pattern = torch.ones(T)
        pattern[0] = 0
    out = torch.zeros(T, len(labels), N, dtype=torch.float64)
    for b, y in enumerate(labels.tolist()):
        out[:, b, y] = pattern
    return out


# --------------------------------------------------------------------------- count
@pytest.mark.parametrize("device", DEV)
@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_count_loss_matches_original(device, reverse, reduction, gen):
    T, B, N = 10, 12, 4
    spikes = spikes_of(gen, (T, B, N), p=0.4, device=device)
    labels = torch.randint(0, N, (B,), generator=gen).to(device)
    desired, undesired = 5, 2
    # one neuron in each zone, whatever the draw: the true class above / below desired_count,
    # another class below / above undesired_count
    spikes[:, 0, labels[0]] = 1
    spikes[:, 1, labels[1]] = 0
    spikes[:, 2, (labels[2] + 1) % N] = 0
    spikes[:, 3, (labels[3] + 1) % N] = 1
    loss, grad = loss_and_grad(L.spike_count_loss, spikes, labels, desired_count=desired, undesired_count=undesired,
                               reverse=reverse, reduction=reduction)
    want_loss, want_grad = count_oracle(spikes.cpu(), labels.cpu(), desired, undesired, reverse, reduction)
    torch.testing.assert_close(loss.item(), want_loss)
    torch.testing.assert_close(grad.cpu(), want_grad)
    # every zone is exercised: true class above (dead) and below desired, others below (dead) and above
    count = spikes.sum(0).cpu()
    true = torch.nn.functional.one_hot(labels.cpu(), N).bool()
    assert (count[true] > desired).any() and (count[true] < desired).any()
    assert (count[~true] < undesired).any() and (count[~true] > undesired).any()
    g = grad.cpu()[0]
    assert torch.all(g[true & (count > desired)] == 0) and torch.all(g[~true & (count < undesired)] == 0)
    assert torch.all(g[true & (count < desired)] != 0) and torch.all(g[~true & (count > undesired)] != 0)
    assert torch.all(grad == grad[:1]), "the same gradient at every step"


def test_count_loss_module_half_and_int32(gen):
    """The module gives the function's value; int32 labels work; half spikes give a float32
    loss and a gradient in their dtype."""
    spikes = spikes_of(gen, (8, 5, 3))
    labels = torch.randint(0, 3, (5,), generator=gen)
    crit = L.SpikeCountLoss(desired_count=4, undesired_count=1, reduction="mean")
    assert "desired_count=4.0" in repr(crit) and "reduction='mean'" in repr(crit)
    want = L.spike_count_loss(spikes, labels, desired_count=4, undesired_count=1, reduction="mean")
    assert torch.equal(crit(spikes, labels), want)
    assert torch.equal(crit(spikes, labels.int()), want)
    half = spikes.half().requires_grad_()
    out = crit(half, labels)
    assert out.dtype == torch.float32
    out.backward()
    assert half.grad.dtype == torch.float16
    torch.testing.assert_close(out.double(), want)


# --------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("device", DEV)
@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kernel_loss_matches_original(device, reverse, reduction, gen):
    T, B, N = 9, 3, 4
    spikes = spikes_of(gen, (T, B, N), device=device)
    labels = torch.randint(0, N, (B,), generator=gen)
    target = original_targets(T, labels, N).to(device)
    loss, grad = loss_and_grad(L.spike_kernel_loss, spikes, target, tau_s=3.0, reverse=reverse, reduction=reduction)
    want_loss, want_grad = kernel_oracle(spikes.cpu(), target.cpu(), 3.0, reverse, reduction)
    torch.testing.assert_close(loss.cpu(), want_loss)
    torch.testing.assert_close(grad.cpu(), want_grad)
    # any trailing shape, the module, tau_s = 1 (no memory: plain squared error)
    s5 = spikes_of(gen, (T, 2, 2, 3, 3), device=device)
    t5 = spikes_of(gen, (T, 2, 2, 3, 3), device=device)
    torch.testing.assert_close(L.SpikeKernelLoss(tau_s=2.5, reduction=reduction)(s5, t5).cpu(),
                               kernel_oracle(s5.cpu(), t5.cpu(), 2.5, True, reduction)[0])
    torch.testing.assert_close(L.spike_kernel_loss(s5, t5, tau_s=1.0), 0.5 * (s5 - t5).square().sum())


# --------------------------------------------------------------------------- TET
@pytest.mark.parametrize("device", DEV)
@pytest.mark.parametrize("reverse", [True, False])
def test_tet_loss_matches_original(device, reverse, gen):
    T, B, N = 6, 5, 4
    spikes = spikes_of(gen, (T, B, N), p=0.5, device=device)
    labels = torch.randint(0, N, (B,), generator=gen).to(device)
    loss, grad = loss_and_grad(L.spike_tet_loss, spikes, labels, reverse=reverse)
    want_loss, want_grad = tet_oracle(spikes.cpu(), labels.cpu(), reverse)
    torch.testing.assert_close(loss.item(), want_loss)
    torch.testing.assert_close(grad.cpu(), want_grad)
    assert torch.equal(L.SpikeTETLoss(reverse=reverse)(spikes, labels), loss)
    assert "reverse=" in repr(L.SpikeTETLoss())


# --------------------------------------------------------------------------- timing
@pytest.mark.parametrize("device", DEV)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_timing_loss_matches_original(device, reduction, gen):
    T, B, N = 10, 8, 3
    spikes = spikes_of(gen, (T, B, N), p=0.35, device=device)
    spikes[:, 0, :] = 0  # a sample with no output spikes at all
    labels = torch.randint(0, N, (B,), generator=gen).to(device)
    # every zone, whatever the draw: sample 1's true class fires at steps 1 (before the
    # target's 2: dead) and 7 (after its 4: active); another class fires once (active) and
    # has empty slots (dead)
    spikes[:, 1, :] = 0
    spikes[[0, 6], 1, labels[1]] = 1
    spikes[3, 1, (labels[1] + 1) % N] = 1
    target = original_targets(T, labels.cpu(), N).to(device)
    loss, grad = loss_and_grad(L.spike_timing_loss, spikes, target, labels, reduction=reduction)
    want_loss, want_grad, zones = timing_oracle(spikes.cpu(), target.cpu(), labels.cpu(), reduction)
    assert zones == {("dead", True), ("dead", False), ("active", True), ("active", False)}, zones
    torch.testing.assert_close(loss.item(), want_loss)
    torch.testing.assert_close(grad.cpu(), want_grad)
    assert torch.all(grad[spikes == 0] == 0), "only spikes receive a gradient"
    assert torch.all(grad[:, 0] == 0)
    crit = L.SpikeTimingLoss(reduction=reduction)
    assert torch.equal(crit(spikes, target, labels), loss) and repr(crit) == f"SpikeTimingLoss(reduction={reduction!r})"


def test_timing_loss_is_not_reversed():
    """One true-class spike at step 6 against a target at step 2: too late, delta = (6 - 2 + 0.5)
    / T > 0; the spike's gradient is +delta, the time gradient that moves it earlier. The slot
    with no spike on either side (t = T + 1 both) counts 0.5 / T in the loss for the true class
    and nothing for the others."""
    T = 8
    out = torch.zeros(T, 1, 2, dtype=torch.float64)
    tar = torch.zeros_like(out)
    out[5, 0, 0] = 1
    tar[1, 0, 0] = 1
    loss, grad = loss_and_grad(L.spike_timing_loss, out, tar, torch.tensor([0]))
    delta = 4.5 / T
    torch.testing.assert_close(loss.item(), 0.5 * delta**2 + (T - 1) * 0.5 * (0.5 / T) ** 2)
    assert grad[5, 0, 0] == delta and grad.abs().sum() == delta


# --------------------------------------------------------------------------- reverse_grad
def test_reverse_grad(gen):
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    y = L.reverse_grad(x)
    assert torch.equal(y, x)
    g = torch.randn(4, 3, generator=gen)
    y.backward(g)
    assert torch.equal(x.grad, -g)
    # the adapter for any other count loss
    spikes = spikes_of(gen, (6, 4, 3)).requires_grad_()
    labels = torch.tensor([0, 2, 1, 1])
    torch.nn.functional.cross_entropy(L.reverse_grad(spikes).sum(0), labels).backward()
    plain = spikes.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(plain.sum(0), labels).backward()
    assert torch.equal(spikes.grad, -plain.grad)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        L.reverse_grad([1.0])


# --------------------------------------------------------------------------- checks
def test_argument_checks():
    s = torch.zeros(4, 2, 3)
    lab = torch.tensor([0, 2])
    count = dict(desired_count=3, undesired_count=1)
    cases = [
        (lambda: L.spike_count_loss(s[0], lab, **count), ValueError, r"spikes must be \[T, B, N\]"),
        (lambda: L.spike_count_loss(s[:0], lab, **count), ValueError, "at least one time step"),
        (lambda: L.spike_count_loss(s.long(), lab, **count), TypeError, "spikes must be float32"),
        (lambda: L.spike_count_loss(s, lab.float(), **count), TypeError, "labels must be int32 or int64"),
        (lambda: L.spike_count_loss(s, lab[:1], **count), ValueError, r"labels must be \[B\] = \[2\]"),
        (lambda: L.spike_count_loss(s, torch.tensor([0, 3]), **count), ValueError, r"labels must be in \[0, 3\)"),
        (lambda: L.spike_count_loss(s, torch.tensor([-1, 0]), **count), ValueError, "from -1 to 0"),
        (lambda: L.spike_count_loss(s, [0, 1], **count), TypeError, "labels must be a torch.Tensor"),
        (lambda: L.spike_count_loss(s, lab, desired_count=-1, undesired_count=0), ValueError, "desired_count must be"),
        (lambda: L.spike_count_loss(s, lab, desired_count=1, undesired_count="0"), TypeError, "undesired_count"),
        (lambda: L.spike_count_loss(s, lab, **count, reduction="none"), ValueError, "reduction must be 'sum' or"),
        (lambda: L.spike_count_loss(s, lab, **count, reverse=1), TypeError, "reverse must be True or False"),
        (lambda: L.spike_count_loss(s, lab, 3, 1), TypeError, "positional"),
        (lambda: L.spike_kernel_loss(s, s[:, :1], tau_s=3.0), ValueError, "target_spikes must have the shape"),
        (lambda: L.spike_kernel_loss(s, s, tau_s=0.5), ValueError, "tau_s must be finite and >= 1"),
        (lambda: L.spike_kernel_loss(s, s.bool(), tau_s=3.0), TypeError, "target_spikes must be float32"),
        (lambda: L.spike_tet_loss(s, lab.reshape(2, 1)), ValueError, r"labels must be \[B\]"),
        (lambda: L.spike_timing_loss(s, s, lab, reduction="avg"), ValueError, "reduction"),
        (lambda: L.spike_timing_loss(s, s[:2], lab), ValueError, "target_spikes must have the shape"),
        (lambda: L.SpikeCountLoss(desired_count=float("inf"), undesired_count=0), ValueError, "finite"),
        (lambda: L.SpikeKernelLoss(tau_s=None), TypeError, "tau_s must be a Python number"),
        (lambda: L.SpikeTETLoss(reverse="yes"), TypeError, "reverse"),
        (lambda: L.SpikeTimingLoss(reduction=None), ValueError, "reduction"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


# --------------------------------------------------------------------------- training
def _train_count(reverse: bool, steps: int):
    g = torch.Generator().manual_seed(3)
    T, B, N_in, C = 16, 16, 24, 4
    x = (torch.rand(T, B, N_in, generator=g) < 0.25).float()
    labels = torch.arange(B) % C
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        snnspx.nn.SRMLinear(N_in, 32, v_th=0.5),
        snnspx.nn.SRMLinear(32, C, v_th=0.5),
    )
    crit = L.SpikeCountLoss(desired_count=6, undesired_count=1, reverse=reverse, reduction="mean")
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        loss = crit(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_network_learns_with_count_loss():
    """Two SRMLinear layers on a fixed batch: SpikeCountLoss (reverse=True, no manual sign
    trick) brings the loss under half of its start (seen: 1.17 -> 0.29); with reverse=False (a
    count gradient handed to the layers as a time gradient) the loss rises instead."""
    losses = _train_count(True, 40)
    assert sum(losses[-5:]) / 5 < losses[0] / 2, f"loss did not fall: {[round(v, 3) for v in losses]}"
    wrong = _train_count(False, 10)
    assert wrong[-1] > 2 * wrong[0], f"the unreversed gradient should raise the loss: {[round(v, 3) for v in wrong]}"
