"""Layers of snnspx: thin modules over :mod:`snnspx.functional`."""

from .layers import SpikeAvgPool2d, SRMConv2d, SRMLinear
from .neuron import SRMNeuron
from .quantizer import Quantizer
from .suppix import SupPixPool, SupPixUnpool

__all__ = ["SRMNeuron", "SRMConv2d", "SRMLinear", "SpikeAvgPool2d", "Quantizer", "SupPixPool", "SupPixUnpool"]
