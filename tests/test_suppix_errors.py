"""Superpixel pooling's argument errors: the functional API on every CPU backend and the
reference's loops name the bad argument; the compiled ops check their own arguments."""

from __future__ import annotations

import functools
import types

import pytest
import torch

from snnspx import functional as F
from snnspx import reference as R
from suppix_helpers import cpp_loaded  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("cpp_loaded")


def _api(backend):
    if backend == "reference":
        return types.SimpleNamespace(pool=R.suppix_pool, unpool=R.suppix_unpool)
    return types.SimpleNamespace(
        pool=functools.partial(F.suppix_pool, backend=backend), unpool=functools.partial(F.suppix_unpool, backend=backend)
    )


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_bad_arguments_name_the_argument(backend):
    api = _api(backend)
    pool, unpool = api.pool, api.unpool
    x = torch.randn(2, 2, 3, 4, 5)
    lab = torch.zeros(2, 4, 5, dtype=torch.int64)
    with pytest.raises(TypeError, match="labels must be an int32 or int64 tensor, got torch.float32"):
        pool(x, lab.float())
    with pytest.raises(ValueError, match="labels must cover x's"):
        pool(x, lab[:, :3])
    with pytest.raises(ValueError, match="labels' batch size"):
        pool(x, torch.zeros(3, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="per-step labels' T"):
        pool(x, torch.zeros(3, 2, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"per-step labels \[T, B, H, W\] need x"):
        pool(x[0], torch.zeros(2, 2, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 3.*got a label 3"):
        pool(x, lab + 3, num_superpixels=3)
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 2"):
        unpool(torch.randn(2, 2, 3, 2), lab + 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        pool(x, lab, mode="mean")
    if backend != "reference":  # the reference's forward has no grad argument (its backward has)
        with pytest.raises(ValueError, match="grad must be one of"):
            pool(x, lab, grad="approx")
        with pytest.raises(ValueError, match="grad='spike' is the backward of mode='avg' only"):
            pool(x, lab, mode="max", grad="spike")
    with pytest.raises(ValueError, match="num_superpixels must be in"):
        pool(x, lab, num_superpixels=-1)
    with pytest.raises(TypeError, match="num_superpixels must be an int"):
        pool(x, lab, num_superpixels=2.0)
    with pytest.raises(ValueError, match=r"x must be \[T, B, C, H, W\] or \[B, C, H, W\]"):
        pool(x[0, 0], lab)
    with pytest.raises(TypeError, match="x must be float32"):
        pool(x.long(), lab)
    with pytest.raises(ValueError, match=r"y must be \[T, B, C, K\] or \[B, C, K\]"):
        unpool(x, lab)


def test_reference_backward_names_the_argument():
    """The reference's backward loop checks mode and grad as the op does."""
    x = torch.randn(2, 2, 3, 4, 5)
    lab = torch.zeros(2, 4, 5, dtype=torch.int64)
    g = torch.randn(2, 2, 3, 1)
    with pytest.raises(ValueError, match="grad must be one of"):
        R.suppix_pool_backward(g, x, lab, num_superpixels=1, mode="avg", grad="approx")
    with pytest.raises(ValueError, match="grad='spike' is the backward of mode='avg' only"):
        R.suppix_pool_backward(g, x, lab, num_superpixels=1, mode="max", grad="spike")
    with pytest.raises(ValueError, match="mode must be one of"):
        R.suppix_pool_backward(g, x, lab, num_superpixels=1, mode="mean")


def test_call_forms_and_reference_is_no_backend():
    """Every argument after the tensors is keyword-only; "reference" is not a backend (the
    oracle is called directly), and the error says so."""
    x = torch.randn(2, 2, 3, 4, 5)
    lab = torch.zeros(2, 4, 5, dtype=torch.int64)
    with pytest.raises(TypeError):
        F.suppix_pool(x, lab, 1, "avg")  # noqa
    with pytest.raises(TypeError):
        F.suppix_counts(lab, 1)  # noqa
    with pytest.raises(TypeError):
        R.suppix_pool(x, lab, 1, "avg")  # noqa
    for call in (
        lambda: F.suppix_pool(x, lab, backend="reference"),
        lambda: F.suppix_unpool(torch.randn(2, 2, 3, 1), lab, backend="reference"),
        lambda: F.suppix_counts(lab, backend="reference"),
    ):
        with pytest.raises(ValueError, match="'reference' is not a backend"):
            call()


def test_compiled_ops_check_their_arguments():
    """The C++ checks stand on their own, for callers of torch.ops.snnspx directly."""
    F.suppix_pool(torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, dtype=torch.int64), num_superpixels=1, backend="cpp")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::suppix_pool", "CPU")
    ops = torch.ops.snnspx
    x = torch.randn(2, 3, 4, 10)
    lab = torch.zeros(1, 3, 10, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="mode must be 'sum', 'avg', 'max' or 'avg_spike'"):
        ops.suppix_pool(x, lab, 2, "mean", True, "")
    with pytest.raises(RuntimeError, match="labels must be an int32 or int64 tensor"):
        ops.suppix_pool(x, lab.float(), 2, "sum", True, "")
    with pytest.raises(RuntimeError, match=r"labels.size\(2\) must be the pixel count P = 10"):
        ops.suppix_pool(x, lab[..., :9], 2, "sum", True, "")
    with pytest.raises(RuntimeError, match=r"labels.size\(1\) must be 1 \(shared by the batch\) or B = 3"):
        ops.suppix_pool(x, torch.zeros(1, 2, 10, dtype=torch.int64), 2, "sum", True, "")
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 2"):
        ops.suppix_pool(x, lab + 2, 2, "sum", True, "")
    with pytest.raises(RuntimeError, match="num_superpixels must be in"):
        ops.suppix_pool(x, lab, -3, "sum", True, "")
    with pytest.raises(RuntimeError, match=r"x must be \[T, B, C, P\]"):
        ops.suppix_pool(x[0], lab, 2, "sum", True, "")
    y, aux = ops.suppix_pool(x, lab, 2, "max", True, "")
    with pytest.raises(RuntimeError, match="aux must have the shape of grad_y"):
        ops.suppix_pool_backward(y, lab, aux[:1], "max", "")
    _, counts = ops.suppix_pool(x, lab, 2, "avg", True, "")
    with pytest.raises(RuntimeError, match=r"aux must be the counts \[L, Bl, K\]"):
        ops.suppix_pool_backward(y, lab, aux, "avg", "")
    assert ops.suppix_pool_backward(y, lab, counts, "avg", "").shape == x.shape
