"""snnspx.init.rate_init: a silent deep stack fires after it, per the original's criterion;
determinism, the error case, batch_first layers, plain weights and modes restored."""

from __future__ import annotations

import collections
import copy

import pytest
import torch

import snnspx
from snnspx.init import LayerRate, rate_init


def silent_stack(batch_first=False, weight_norm=True, n=4, width=24):
    """n SRMLinear layers whose effective weights are scaled down 10 times: all silent."""
    torch.manual_seed(0)
    layers = [snnspx.nn.SRMLinear(width, width, weight_norm=weight_norm, batch_first=batch_first) for _ in range(n)]
    with torch.no_grad():
        for m in layers:
            for p in ([m.bn_weight, m.bn_bias] if weight_norm else [m.weight]):
                p.mul_(0.1)
    return torch.nn.Sequential(*layers)


def input_spikes(T=12, B=8, N=24, p=0.3):
    return (torch.rand(T, B, N, generator=torch.Generator().manual_seed(1)) < p).float()


def late_count(out, T):
    """The criterion's quantity: spikes per neuron over t >= T * 2 // 3."""
    return out[T * 2 // 3:].sum().item() / out[0].numel()


def layer_outputs(model, x):
    outs = []
    hooks = [m.register_forward_hook(lambda m, a, o: outs.append(o)) for m in model]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("weight_norm", [True, False], ids=["wn", "plain"])
def test_silent_stack_fires_after_init(weight_norm):
    T, target = 12, 1.0
    model = silent_stack(weight_norm=weight_norm)
    x = input_spikes(T)
    assert all(o.sum() == 0 for o in layer_outputs(model, x)), "the stack should start silent"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = rate_init(model, x, target=target)
    assert [r.name for r in report] == ["0", "1", "2", "3"]
    assert all(isinstance(r, LayerRate) and 0.1 <= r.scale <= 100 for r in report)
    goal = target / T * (T - T * 2 // 3) * 1.3
    outs = layer_outputs(model, x)
    for r, m, out in zip(report, model, outs):
        assert out.sum() > 0, f"layer {r.name} is silent"
        torch.testing.assert_close(r.rate, out.sum().item() / out[0].numel())
        # bisection to 1 %: a factor 1 % above fires above the goal's line, 1 % below does not
        # reach it (checked on this layer's own input)
        inp = x if r.name == "0" else outs[int(r.name) - 1]
        names = ["bn_weight", "bn_bias"] if weight_norm else ["weight"]
        for factor, above in ((1.0101, True), (1 / 1.0101, False)):
            m2 = copy.deepcopy(m)
            with torch.no_grad():
                for name in names:
                    getattr(m2, name).mul_(factor)
                assert (late_count(m2(inp), T) > goal) == above, (r, factor)
        # the factor went to the tensors that scale W_hat, and only there
        for name, p in m.named_parameters():
            key = f"{r.name}.{name}"
            if name in names:
                torch.testing.assert_close(p.detach(), before[key] * r.scale)
            else:
                assert torch.equal(p.detach(), before[key])


def test_conv_stack_and_determinism():
    """Conv layers (with and without weight_norm) in a network with pooling and a linear head;
    two copies of the model give the same factors and the same parameters, bit for bit."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        snnspx.nn.SRMConv2d(2, 6, 3, padding=1, weight_norm=True),
        snnspx.nn.SRMConv2d(6, 6, 3, padding=1),
        snnspx.nn.SpikeAvgPool2d(2),
        torch.nn.Flatten(2),
        snnspx.nn.SRMLinear(6 * 4 * 4, 5),
    )
    x = (torch.rand(12, 3, 2, 8, 8, generator=torch.Generator().manual_seed(4)) < 0.3).float()
    twin = copy.deepcopy(model)
    report = rate_init(model, x, target=1.0)
    assert [r.name for r in report] == ["0", "1", "4"]
    assert model(x).sum() > 0
    assert rate_init(twin, x, target=1.0) == report
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)


def test_batch_first_layers():
    """The same stack with batch_first=True, given [B, T, N], gets the same factors."""
    T = 12
    time_major = silent_stack()
    batch_first = silent_stack(batch_first=True)
    x = input_spikes(T)
    want = rate_init(time_major, x)
    got = rate_init(batch_first, x.transpose(0, 1).contiguous())
    assert [(r.name, r.scale) for r in got] == [(r.name, r.scale) for r in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.rate, b.rate)


def test_unreachable_target_names_the_layer():
    """With input spikes only before the last third of the window, even high cannot make the
    late steps fire: a RuntimeError naming the layer, whose parameters are left as they were;
    the layers before it keep their scale."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("first", snnspx.nn.SRMLinear(24, 24))
    model.add_module("head", snnspx.nn.SRMLinear(24, 3))
    silent = torch.zeros(12, 4, 24)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r"layer 'first' cannot reach the target.*high=100.0"):
        rate_init(model, silent)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model = torch.nn.Sequential(collections.OrderedDict(
        first=model.first, silence=Silence(), head=model.head))  # no input spikes reach the head
    report = []
    with pytest.raises(RuntimeError, match="layer 'head' cannot reach"):
        report = rate_init(model, input_spikes(12))
    assert report == []
    assert not torch.equal(model.first.bn_weight, before["first.bn_weight"]), "the first layer keeps its scale"
    assert torch.equal(model.head.bn_weight, before["head.bn_weight"])


class Silence(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_modes_restored_and_verbose(capsys):
    """Training and eval modes of every module come back as they were; dropout is off during
    the search (eval mode), so the result does not depend on the random generator."""
    model = silent_stack(n=2)
    model.insert(1, snnspx.nn.SpikeDropout(0.5, mask="neuron"))
    model.train()
    model[2].eval()
    x = input_spikes()
    torch.manual_seed(5)
    report = rate_init(model, x, verbose=True)
    assert model.training and model[0].training and model[1].training and not model[2].training
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("rate_init: 0: scale") and "spikes per neuron" in lines[0]
    model2 = silent_stack(n=2)
    model2.insert(1, snnspx.nn.SpikeDropout(0.5, mask="neuron"))
    torch.manual_seed(6)
    assert rate_init(model2, x) == report
    assert rate_init(torch.nn.Sequential(torch.nn.Identity()), x) == []


def test_layer_not_called_and_argument_checks():
    model = torch.nn.ModuleDict({"a": snnspx.nn.SRMLinear(4, 4)})
    model.forward = lambda x: x
    with pytest.raises(RuntimeError, match="layer 'a' was not called"):
        rate_init(model, torch.ones(3, 2, 4))
    m = snnspx.nn.SRMLinear(4, 4)
    x = torch.ones(3, 2, 4)
    for kw, error, match in [
        (dict(target=0.0), ValueError, "target must be finite and > 0"),
        (dict(low=5.0, high=2.0), ValueError, "low must be below high"),
        (dict(tol=1.0), ValueError, "tol must be > 1"),
        (dict(high="100"), TypeError, "high must be a Python number"),
        (dict(verbose=1), TypeError, "verbose must be True or False"),
    ]:
        with pytest.raises(error, match=match):
            rate_init(m, x, **kw)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        rate_init(lambda x: x, x)
