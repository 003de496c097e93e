"""Layers of snnspx: thin modules over :mod:`snnspx.functional`."""

from .neuron import SRMNeuron
from .suppix import SupPixPool, SupPixUnpool
from .fused import SRMSupPixPool

__all__ = ["SRMNeuron", "SupPixPool", "SupPixUnpool", "SRMSupPixPool"]
