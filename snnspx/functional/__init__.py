"""Functional form of every snnspx operator.

Each op takes ``backend: str | None = None``: ``"cuda"``, ``"cpp"`` or ``"torch"``; None
picks one as :func:`snnspx.backends` explains. Every argument after the tensors is keyword-only.
"""

from .layers import spike_avg_pool2d, srm_conv2d, srm_linear, standardize_weight
from .quant import pow2_scale_exponent, quantize
from .srm import srm_backward, srm_forward, srm_neuron
from .surrogate import srm_neuron_surrogate
from .suppix import suppix_counts, suppix_pool, suppix_unpool
from .fused import srm_suppix_pool

__all__ = [
    "srm_forward",
    "srm_backward",
    "srm_neuron",
    "srm_neuron_surrogate",
    "srm_conv2d",
    "srm_linear",
    "standardize_weight",
    "spike_avg_pool2d",
    "quantize",
    "pow2_scale_exponent",
    "suppix_pool",
    "suppix_unpool",
    "suppix_counts",
    "srm_suppix_pool",
]
