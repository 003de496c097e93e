"""Superpixel pooling (docs/maths.md §5): its ops' schemas, PyTorch kernels, fake kernels and
autograd formulas, and the public wrappers.

The ops work on canonical layouts (:mod:`snnspx._checks.labels`): ``x`` ``[T, B, C, P]``, labels
``[L, Bl, P]`` int32/int64 with ``L`` in ``{1, T}``, ``Bl`` in ``{1, B}``; negative labels are
ignored pixels. ``mode`` is ``"sum" | "avg" | "max" | "avg_spike"`` (``"avg"`` whose backward is
the spike form ``g / m``).

* ``suppix_pool(x, labels, num_superpixels, mode, check_labels) -> (y [T, B, C, K], aux int32)``:
  ``aux`` holds the counts ``[L, Bl, K]`` for sum/avg, the argmax ``[T, B, C, K]`` (-1 where empty)
  for max, and ``m``, the non-zero inputs ``[T, B, C, K]``, for avg_spike. ``check_labels``: fail on
  a label ``>= K``; without it such labels are ignored, never read or written out of bounds.
* ``suppix_pool_backward(grad_y, labels, aux, mode) -> grad_x [T, B, C, P]``.
* ``suppix_unpool(y, labels, check_labels) -> z [T, B, C, P]``, ``z[p] = y[labels[p]]``, 0 for
  ignored pixels.
* ``suppix_counts(labels, num_superpixels) -> int32 [L, Bl, K]``, labels outside ``[0, K)`` not counted.

Every kernel is deterministic: the same inputs give the same bits on every run. The compiled
kernels never use float atomics; the PyTorch kernels group pixels by label with a stable
sort and reduce the groups with :func:`torch.segment_reduce`, which walks each segment in a
fixed order on the CPU and on CUDA (``scatter_add``/``index_add`` add in a varying order on CUDA).
"""

from __future__ import annotations

import torch

from .. import _checks, _library
from .._backend import kernels, resolve

__all__ = ["suppix_pool", "suppix_unpool", "suppix_counts"]


# --------------------------------------------------------------------------- PyTorch kernels
def _segments(lab: torch.Tensor, K: int):
    """Per label map [L, Bl, P]: (keys, order, offsets): the labels stably sorted, the pixel
    indices in that order, and superpixel k's range [offsets[k], offsets[k + 1]) of it."""
    # contiguous: searchsorted warns about (and copies) non-contiguous sorted keys, which a
    # transposed label view (e.g. batch_first per-step labels) would otherwise give
    keys, order = torch.sort(lab.contiguous(), dim=-1, stable=True)
    bounds = torch.arange(K + 1, device=lab.device, dtype=lab.dtype).expand(*lab.shape[:2], K + 1).contiguous()
    return keys, order, torch.searchsorted(keys, bounds)


def check_strategy(op: str, strategy: str) -> None:
    """The PyTorch kernels have one strategy, ``"torch"`` (``""`` chooses it); the same error as
    the compiled kernels' for any other."""
    if strategy not in ("", "torch"):
        raise RuntimeError(f"{op}: unknown strategy '{strategy}'; this device's strategies are 'torch', or '' for the default")


def _pool_kernel(x: torch.Tensor, lab: torch.Tensor, K: int, mode: str, check_labels: bool = False, strategy: str = ""):
    """x [T, B, C, P], lab [L, Bl, P] -> (y [T, B, C, K], aux) (see the module docstring)."""
    check_strategy("suppix_pool", strategy)
    if mode not in ("sum", "avg", "max", "avg_spike"):
        raise RuntimeError(f"suppix_pool: mode must be 'sum', 'avg', 'max' or 'avg_spike', got {mode!r}")
    _checks.check_devices("suppix_pool", x=x, labels=lab)
    if check_labels:
        _checks.check_label_range(lab, K)
    T, B, C, P = x.shape
    L, Bl, _ = lab.shape
    dev = x.device
    keys, order, offsets = _segments(lab, K)
    counts = offsets.diff(dim=-1)  # [L, Bl, K]
    small = T * B * C == 0 or K == 0 or P == 0
    if small:
        y = x.new_zeros((T, B, C, K))
        aux = x.new_full((T, B, C, K), -1 if mode == "max" else 0, dtype=torch.int32)
    else:
        acc = _checks.acc_dtype(x.dtype)
        shape = (T, B, C, P)
        xs = x.gather(-1, order[:, :, None, :].expand(shape)).to(acc)  # grouped by superpixel
        # segments per (t, b, c) row: the ignored pixels below 0, superpixels 0..K-1, those >= K
        lengths = torch.cat([offsets[..., :1], counts, P - offsets[..., -1:]], dim=-1)
        lengths = lengths[:, :, None, :].expand(T, B, C, K + 2).contiguous()

        def seg(data, reduce):
            # always a copy, never a view of segment_reduce's result (an op's output must not alias): with one
            # (t, b, c) row the slice is contiguous and .contiguous() would return it as is
            out = torch.segment_reduce(data, reduce, lengths=lengths, axis=3, unsafe=True)
            return out[..., 1 : K + 1].clone(memory_format=torch.contiguous_format)

        n = counts[:, :, None, :]
        if mode == "max":
            top = seg(xs, "max")
            # argmax: the first grouped position (= lowest pixel) holding the maximum
            valid = (keys >= 0) & (keys < K)
            top_at = top.gather(-1, keys.clamp(0, K - 1).long()[:, :, None, :].expand(shape))
            hit = (xs == top_at) | (xs.isnan() & top_at.isnan())
            hit &= valid[:, :, None, :]
            pos = torch.arange(P, device=dev, dtype=torch.float64).expand(shape)
            first = seg(torch.where(hit, pos, float(P)), "min").clamp(max=P - 1).long()
            arg = order[:, :, None, :].expand(shape).gather(-1, first)
            aux = torch.where(n > 0, arg, -1).to(torch.int32)
            y = torch.where(n > 0, top, 0)
        else:
            s = seg(xs, "sum")
            if mode != "sum":
                s = torch.where(n > 0, s / n.clamp(min=1).to(acc), 0)
            y = s
            aux = seg((xs != 0).to(acc), "sum").to(torch.int32) if mode == "avg_spike" else None
    if mode in ("sum", "avg"):
        aux = counts.to(torch.int32)
    return y.to(x.dtype), aux


def _pool_backward_kernel(
    src: torch.Tensor, lab: torch.Tensor, aux: torch.Tensor | None, mode: str, strategy: str = ""
) -> torch.Tensor:
    """out[t, b, c, p] from src[t, b, c, label(p)] [T, B, C, K], divided as `mode` says: pooling's
    backward (src = grad_y), and unpooling (mode "sum")."""
    _checks.check_devices("suppix_pool_backward", grad_y=src, labels=lab, **({} if aux is None else {"aux": aux}))
    check_strategy("suppix_pool_backward", strategy)
    T, B, C, K = src.shape
    P = lab.shape[-1]
    if K == 0 or src.numel() == 0:
        return src.new_zeros((T, B, C, P))
    shape = (T, B, C, P)
    lab = lab.long()  # gather indices: the gather of torch 2.4 takes int64 only
    valid = ((lab >= 0) & (lab < K))[:, :, None, :]
    val = src
    if mode in ("avg", "avg_spike"):
        n = aux[:, :, None, :] if mode == "avg" else aux
        val = torch.where(n > 0, src.to(_checks.acc_dtype(src.dtype)) / n.clamp(min=1), 0).to(src.dtype)
    if mode != "max":
        # ignored pixels read an appended zero (index K): one gather, no mask over the output
        idx = torch.where(valid, lab[:, :, None, :], K).expand(shape)
        return torch.cat([val, val.new_zeros((T, B, C, 1))], dim=-1).gather(-1, idx)
    idx = lab.clamp(0, K - 1)[:, :, None, :].expand(shape)
    pix = torch.arange(P, device=src.device)
    valid = valid & (aux.gather(-1, idx) == pix)
    return torch.where(valid, val.gather(-1, idx), 0)


def _unpool_kernel(y: torch.Tensor, lab: torch.Tensor, check_labels: bool, strategy: str) -> torch.Tensor:
    _checks.check_devices("suppix_unpool", y=y, labels=lab)
    check_strategy("suppix_unpool", strategy)
    if check_labels:
        _checks.check_label_range(lab, y.shape[-1])
    return _pool_backward_kernel(y, lab, None, "sum")


def _counts_kernel(lab: torch.Tensor, K: int) -> torch.Tensor:
    return _segments(lab, K)[2].diff(dim=-1).to(torch.int32)



def _pool_adjoint(v: torch.Tensor, labels: torch.Tensor, aux: torch.Tensor, mode: str, K: int, pool) -> torch.Tensor:
    """The adjoint of pooling's backward ``gather(., labels, aux, mode)``: [T, B, C, P] -> [T, B, C, K],
    with ``pool(v, labels, K, mode)`` the sum/avg pooling of the backend. Sums and divides in
    float32 (float64 for float64) and rounds once, as the reference does."""
    if mode in ("sum", "avg"):  # sum / n with n the pixel count, 0 where n = 0
        return pool(v, labels, K, mode)
    if mode == "avg_spike":  # sum / m with m = aux, the non-zero inputs per (t, b, c, k)
        s = pool(v.to(_checks.acc_dtype(v.dtype)), labels, K, "sum")
        return _checks.cast_output(torch.where(aux > 0, s / aux.clamp(min=1), 0), v.dtype)
    # max: the value at the argmax pixel, 0 for an empty superpixel (aux = -1)
    if v.shape[-1] == 0:
        return v.new_zeros(aux.shape)
    return torch.where(aux >= 0, v.gather(-1, aux.clamp(min=0).long()), 0)


def _pool_op(v, labels, K, mode):
    return _POOL(v, labels, K, mode, False, "")[0]



# --------------------------------------------------------------------------- schemas, fakes, autograd
_library.define(
    "suppix_pool(Tensor x, Tensor labels, int num_superpixels, str mode, bool check_labels, str strategy)"
    " -> (Tensor, Tensor)",
    _pool_kernel,
)
_library.define(
    "suppix_pool_backward(Tensor grad_y, Tensor labels, Tensor aux, str mode, str strategy) -> Tensor",
    _pool_backward_kernel,
)
_library.define("suppix_unpool(Tensor y, Tensor labels, bool check_labels, str strategy) -> Tensor", _unpool_kernel)
_library.define("suppix_counts(Tensor labels, int num_superpixels) -> Tensor", _counts_kernel)
# The strategy that `op` (a superpixel or fused op) runs with strategy "" for these inputs (x: the
# op's first tensor in its canonical layout; labels [L, Bl, P]): which kernel serves a call,
# without instrumenting the ops. The PyTorch kernel answers "torch".
_library.define(
    "_strategy(str op, Tensor x, Tensor labels, int num_superpixels, str mode) -> str",
    lambda op, x, labels, num_superpixels, mode: "torch",
)
_POOL = _library.op("suppix_pool")
_POOL_BACKWARD = _library.op("suppix_pool_backward")
_UNPOOL = _library.op("suppix_unpool")
_COUNTS = _library.op("suppix_counts")


@torch.library.register_fake("snnspx::suppix_pool")
def _pool_fake(x, labels, num_superpixels, mode, check_labels, strategy):
    _checks.check_devices("suppix_pool", x=x, labels=labels)
    T, B, C, _ = x.shape
    K = num_superpixels
    y = x.new_empty((T, B, C, K))
    if mode in ("sum", "avg"):
        aux = x.new_empty((labels.shape[0], labels.shape[1], K), dtype=torch.int32)
    else:
        aux = x.new_empty((T, B, C, K), dtype=torch.int32)
    return y, aux


@torch.library.register_fake("snnspx::suppix_pool_backward")
def _pool_backward_fake(grad_y, labels, aux, mode, strategy):
    _checks.check_devices("suppix_pool_backward", grad_y=grad_y, labels=labels, aux=aux)
    T, B, C, _ = grad_y.shape
    return grad_y.new_empty((T, B, C, labels.shape[-1]))


@torch.library.register_fake("snnspx::suppix_unpool")
def _unpool_fake(y, labels, check_labels, strategy):
    _checks.check_devices("suppix_unpool", y=y, labels=labels)
    T, B, C, _ = y.shape
    return y.new_empty((T, B, C, labels.shape[-1]))


@torch.library.register_fake("snnspx::suppix_counts")
def _counts_fake(labels, num_superpixels):
    return labels.new_empty((labels.shape[0], labels.shape[1], num_superpixels), dtype=torch.int32)


def _pool_setup(ctx, inputs, output):
    _, labels, _, mode, _, _ = inputs
    ctx.save_for_backward(labels, output[1])
    ctx.mode = mode
    ctx.set_materialize_grads(False)  # no zero-filled grads for the non-differentiable outputs


def _pool_backward(ctx, grad_y, _grad_aux):
    if grad_y is None:
        return (None,) * 6
    labels, aux = ctx.saved_tensors
    return (_POOL_BACKWARD(grad_y, labels, aux, ctx.mode, ""),) + (None,) * 5


# Pooling's backward is linear in grad_y; its derivative (for a double backward) is the
# adjoint map: pooling again with the same divisor, or a read at the argmax.
def _pool_backward_setup(ctx, inputs, output):
    grad_y, labels, aux, mode, _ = inputs
    ctx.save_for_backward(labels, aux)
    ctx.mode, ctx.K = mode, grad_y.shape[-1]


def _pool_backward_backward(ctx, gg):
    labels, aux = ctx.saved_tensors
    return _pool_adjoint(gg, labels, aux, ctx.mode, ctx.K, _pool_op), None, None, None, None


# Unpooling's backward is sum pooling (labels >= K were ignored forward, and are here).
def _unpool_setup(ctx, inputs, output):
    y, labels, _, _ = inputs
    ctx.save_for_backward(labels)
    ctx.K = y.shape[-1]


def _unpool_backward(ctx, grad_z):
    (labels,) = ctx.saved_tensors
    return _POOL(grad_z, labels, ctx.K, "sum", False, "")[0], None, None, None


_library.register_autograd("suppix_pool", _pool_backward, _pool_setup)
_library.register_autograd("suppix_pool_backward", _pool_backward_backward, _pool_backward_setup)
_library.register_autograd("suppix_unpool", _unpool_backward, _unpool_setup)


# --------------------------------------------------------------------------- public wrappers
def _counts_shape(labels: torch.Tensor, counts: torch.Tensor, K: int) -> torch.Tensor:
    return counts.reshape(*labels.shape[:-2], K).long()


def suppix_pool(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    grad: str = "exact",
    return_counts: bool = False,
    check_labels: bool = True,
    backend: str | None = None,
):
    """Pool each step's channels over superpixels (docs/maths.md §5).

    With ``n[k]`` the pixels labelled k:

    * ``"sum"``: ``y[k] = sum of x[p]`` over the pixels p of k;
    * ``"avg"``: ``y[k] = sum / n[k]``, and 0 where ``n[k] = 0``;
    * ``"max"``: ``y[k] = max of x[p]``, and 0 where ``n[k] = 0``. NaN propagates.

    Gradients (labels get none): ``"sum"`` sends ``g[k]`` to every pixel of k; ``"avg"``
    sends ``g[k] / n[k]`` (``grad="exact"``) or ``g[k] / m[t, b, c, k]`` with m the number
    of non-zero inputs of k at that step and channel, 0 where ``m = 0`` (``grad="spike"``:
    the superpixel form of SpikeAvgPool2d's backward, docs/maths.md §4; like it, every
    pixel of k gets the share, zero inputs included); ``"max"`` sends ``g[k]`` to one
    pixel, the argmax (the lowest flat pixel index ``h * W + w`` among equal maxima).
    Ignored pixels (negative labels) get 0.

    Every backend gives the same bits on every run (sums have a fixed order; no
    float atomics on the GPU). Backends agree to rounding: the CPU kernel and the
    reference add in ascending pixel order, the CUDA kernel in a fixed tree.

    Args:
        x: ``[T, B, C, H, W]``, or ``[B, C, H, W]`` for one step; any strides;
            float32, float64, float16 or bfloat16 (reduced in float32).
        labels: int32 or int64, ``[H, W]`` (one map for all images and steps),
            ``[B, H, W]`` (one per image) or ``[T, B, H, W]`` (one per image and step; needs
            5-D `x`). A size 1 in place of B or T is shared too. A map is never expanded
            to the size of `x`. Negative labels mark pixels that belong to no superpixel.
        num_superpixels: K. None infers ``K = labels.max() + 1``, which reads the labels
            back from the GPU (a synchronisation; give K inside ``torch.compile``).
        mode: ``"sum"``, ``"avg"`` or ``"max"``.
        grad: ``"exact"`` or ``"spike"`` (``"avg"`` only), the backward described above.
        return_counts: also return ``n``, int64 of shape ``labels.shape[:-2] + (K,)``.
        check_labels: a label ``>= K`` raises ``ValueError``. The check costs one read of the
            labels, and on the GPU one read-back of their maximum (the host waits for that
            small copy, made on a side stream, not for the pooling kernel), when K is given
            (an inferred K needs none). ``False`` skips it; labels ``>= K`` are then ignored
            like negative ones (never read or written out of bounds).
        backend: ``"cuda"``, ``"cpp"``, ``"torch"`` or None (see :func:`snnspx.backends`).

    Returns:
        y ``[T, B, C, K]`` (``[B, C, K]`` for 4-D `x`) in the dtype of `x`; with
        ``return_counts``, ``(y, n)``.
    """
    internal = _checks.suppix_mode(mode, grad)
    lay = _checks.suppix_layout(x, labels, pooled=False)
    K, inferred = _checks.num_superpixels(lay.labels, num_superpixels)
    check = _checks.check_flag(check_labels, "check_labels") and not inferred
    b = resolve(backend, x.device)
    with kernels(b, x.device):
        y, aux = _POOL(lay.data, lay.labels, K, internal, check, "")
        if return_counts:
            counts = aux if internal in ("sum", "avg") else _COUNTS(lay.labels, K)
    if lay.single_step:
        y = y[0]
    return (y, _counts_shape(labels, counts, K)) if return_counts else y


def suppix_unpool(
    y: torch.Tensor, labels: torch.Tensor, *, check_labels: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Spread superpixel values back to their pixels: ``z[p] = y[label(p)]``, 0 for negative labels.

    The backward is sum pooling of the gradient (docs/maths.md §5). Deterministic on every
    backend.

    Args:
        y: ``[T, B, C, K]``, or ``[B, C, K]`` for one step; float.
        labels: as for :func:`suppix_pool` (``[H, W]``, ``[B, H, W]`` or ``[T, B, H, W]``); they
            give H and W. ``K = y.shape[-1]``.
        check_labels: a label ``>= K`` raises ``ValueError`` (one read-back on a GPU); ``False``
            skips the check and such pixels get 0.
        backend: see :func:`suppix_pool`.

    Returns:
        z ``[T, B, C, H, W]`` (``[B, C, H, W]`` for 3-D `y`), dtype of `y`.
    """
    lay = _checks.suppix_layout(y, labels, pooled=True)
    _checks.check_flag(check_labels, "check_labels")
    b = resolve(backend, y.device)
    with kernels(b, y.device):
        z = _UNPOOL(lay.data, lay.labels, check_labels, "")
    z = z.unflatten(-1, lay.spatial)
    return z[0] if lay.single_step else z


def suppix_counts(labels: torch.Tensor, *, num_superpixels: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Pixels per superpixel, ``n[..., k]``: int64 of shape ``labels.shape[:-2] + (K,)``.

    `labels` and `num_superpixels` as for :func:`suppix_pool` (an inferred K reads the
    labels back from the GPU); a label ``>= K`` raises ``ValueError``.
    """
    _checks.check_labels_tensor(labels)
    K, inferred = _checks.num_superpixels(labels, num_superpixels)
    b = resolve(backend, labels.device)
    if not inferred:
        _checks.check_label_range(labels, K)
    L = labels.shape[0] if labels.dim() == 4 else 1
    Bl = labels.shape[-3] if labels.dim() >= 3 else 1
    lab = labels.reshape(L, Bl, labels.shape[-2] * labels.shape[-1])  # no -1: H * W may be 0
    with kernels(b, labels.device):
        counts = _COUNTS(lab, K)
    return _counts_shape(labels, counts, K)


