"""Meta tensors: every module and op propagates shapes with no backend given and builds
nothing; a direct op call with tensors on two devices is an error."""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import _backend
from snnspx import functional as F

nn = snnspx.nn


def test_default_backend_of_meta_builds_nothing():
    assert _backend.resolve(None, torch.device("meta")) == "torch"


def _cases():
    x5 = torch.empty(4, 2, 3, 8, 8, device="meta")
    lab = torch.empty(8, 8, dtype=torch.long, device="meta")
    y = torch.empty(4, 2, 3, 6, device="meta")
    return [
        (nn.SRMNeuron(), (x5,), (4, 2, 3, 8, 8)),
        (nn.SRMConv2d(3, 4, 3, padding=1, device="meta"), (x5,), (4, 2, 4, 8, 8)),
        (nn.SRMLinear(8, 5, device="meta"), (x5,), (4, 2, 3, 8, 5)),
        (nn.SpikeAvgPool2d(2), (x5,), (4, 2, 3, 4, 4)),
        (nn.SupPixPool("max", num_superpixels=6), (x5, lab), (4, 2, 3, 6)),
        (nn.SupPixUnpool(), (y, lab), (4, 2, 3, 8, 8)),
        (nn.SRMSupPixPool("avg", 6), (x5, lab), (4, 2, 3, 6)),
        (nn.Quantizer(8).to("meta"), (x5,), (4, 2, 3, 8, 8)),
    ]


@pytest.mark.parametrize("i", range(8))
def test_modules_on_meta(i):
    module, args, shape = _cases()[i]
    out = module(*args)
    assert out.device.type == "meta" and tuple(out.shape) == shape


def test_functional_ops_on_meta():
    x = torch.empty(5, 2, 3, device="meta")
    spikes, du, dut = F.srm_forward(x)
    assert spikes.shape == du.shape == dut.shape == x.shape and du.dtype == torch.float32
    grad_w, grad_t = F.srm_backward(spikes, spikes, du, dut)
    assert grad_w.shape == x.shape and grad_t.device.type == "meta"
    lab = torch.empty(2, 3, dtype=torch.int32, device="meta")
    counts = F.suppix_counts(lab, num_superpixels=4)
    assert tuple(counts.shape) == (4,) and counts.dtype == torch.int64


@pytest.mark.parametrize("op, args", [
    ("suppix_pool", lambda m, c: (torch.ones(1, 1, 1, 4, device=m), torch.zeros(1, 1, 4, dtype=torch.long, device=c), 2, "sum", False, "")),
    ("suppix_unpool", lambda m, c: (torch.ones(1, 1, 1, 2, device=m), torch.zeros(1, 1, 4, dtype=torch.long, device=c), False, "")),
    ("srm_suppix_pool", lambda m, c: (torch.ones(1, 1, 1, 4, device=m), torch.zeros(1, 1, 4, dtype=torch.long, device=c),
                                      2, "sum", 5.0, 3.0, 2.5, 1.0, 0, False, "")),
])
def test_direct_op_call_on_two_devices_is_an_error(op, args):
    for first, second in (("meta", "cpu"), ("cpu", "meta")):
        with pytest.raises(ValueError, match=f"snnspx::{op} needs all its tensors on one device"):
            getattr(torch.ops.snnspx, op)(*args(first, second))


def test_inferred_num_superpixels_on_meta_is_a_clear_error():
    x = torch.empty(2, 1, 1, 4, 4, device="meta")
    lab = torch.empty(4, 4, dtype=torch.long, device="meta")
    for fn in (lambda: F.suppix_pool(x, lab), lambda: F.suppix_counts(lab), lambda: nn.SRMSupPixPool()(x, lab)):
        with pytest.raises(ValueError, match="num_superpixels must be given for meta tensors"):
            fn()
