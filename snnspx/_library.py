"""The ``snnspx`` operator library: schemas, PyTorch kernels, and the per-call kernel choice.

Every op is declared here once, at ``import snnspx``, with its vectorised PyTorch
implementation as the ``CompositeExplicitAutograd`` kernel: that kernel serves every device
for which no compiled kernel is loaded. The compiled libraries (csrc/) only add ``CPU`` and
``CUDA`` kernels to these schemas (``TORCH_LIBRARY_IMPL``), which the dispatcher prefers.
Fake kernels and autograd formulas are registered by the op families in
``snnspx/functional`` through :func:`register_autograd`, once per op, for every kernel.

:func:`torch_kernels` runs the ops' PyTorch kernels even where a compiled kernel is loaded
(``backend="torch"``), under the same autograd formula: a dispatch mode routes each snnspx
op to its PyTorch kernel, and the formula records the choice so that the backward makes it
again.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LIB", "define", "register_autograd", "torch_kernels", "op"]

NAMESPACE = "snnspx"
LIB = torch.library.Library(NAMESPACE, "DEF")

# OpOverload -> its PyTorch kernel, for the forced choice of torch_kernels().
_TORCH_KERNELS: dict[object, Callable] = {}


def op(name: str):
    """``torch.ops.snnspx.<name>.default``."""
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def define(schema: str, torch_kernel: Callable) -> None:
    """Declare ``snnspx::<schema>`` and register `torch_kernel` as its PyTorch kernel."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    LIB.impl(name, torch_kernel, "CompositeExplicitAutograd")
    _TORCH_KERNELS[op(name)] = torch_kernel


class _TorchKernels(TorchDispatchMode):
    """Routes snnspx ops to their PyTorch kernels; every other op runs as usual."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kernel = _TORCH_KERNELS.get(func, func)
        return kernel(*args, **(kwargs or {}))


_state = threading.local()


def forcing_torch() -> bool:
    """Whether this thread is inside :func:`torch_kernels`."""
    return getattr(_state, "on", False)


@contextlib.contextmanager
def torch_kernels(active: bool = True):
    """Within the block, snnspx ops run their PyTorch kernels (when `active`)."""
    if not active or forcing_torch():
        yield
        return
    _state.on = True
    try:
        with _TorchKernels():
            yield
    finally:
        _state.on = False


def register_autograd(name: str, backward: Callable, setup_context: Callable) -> None:
    """``torch.library.register_autograd`` for ``snnspx::<name>``, with the backward run under
    the kernel choice of the forward (see :func:`torch_kernels`)."""

    def setup(ctx, inputs, output):
        ctx.torch_kernels = forcing_torch()
        setup_context(ctx, inputs, output)

    def run_backward(ctx, *grads):
        with torch_kernels(ctx.torch_kernels):
            return backward(ctx, *grads)

    torch.library.register_autograd(f"{NAMESPACE}::{name}", run_backward, setup_context=setup)


def register_raising_autograd(name: str, message: str) -> None:
    """An autograd formula for ``snnspx::<name>`` that raises ``RuntimeError(message)`` when a
    backward reaches it: differentiating its outputs fails loudly, rather than autograd's
    fallback silently giving None."""

    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(message)

    torch.library.register_autograd(f"{NAMESPACE}::{name}", backward, setup_context=setup)


def no_derivative_message(name: str) -> str:
    return (
        f"snnspx: no double backward through {name} (nor any derivative of its outputs): the SRM "
        "neuron's event-driven gradient (docs/maths.md §3) is a surrogate with no derivative of its own"
    )


def register_no_derivative(name: str) -> None:
    """For a backward op of the event-driven gradient: that gradient is a surrogate, not the
    derivative of a function, so it has no derivative of its own, and a double backward
    raises (as ``once_differentiable`` does for Python functions)."""
    register_raising_autograd(name, no_derivative_message(name))
