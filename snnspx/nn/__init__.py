"""Layers of snnspx: thin modules over :mod:`snnspx.functional`."""

from .layers import SpikeAvgPool2d, SRMConv2d, SRMLinear
from .neuron import SRMNeuron
from .suppix import SupPixPool, SupPixUnpool
from .fused import SRMSupPixPool
from .quantizer import Quantizer
from .dropout import SpikeDropout

__all__ = [
    "SRMNeuron", "SRMConv2d", "SRMLinear", "SpikeAvgPool2d", "Quantizer", "SupPixPool", "SupPixUnpool", "SRMSupPixPool",
    "SpikeDropout",
]
