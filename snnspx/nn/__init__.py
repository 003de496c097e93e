"""Layers of snnspx: thin modules over :mod:`snnspx.functional`."""

from .neuron import SRMNeuron
from .suppix import SupPixPool, SupPixUnpool

__all__ = ["SRMNeuron", "SupPixPool", "SupPixUnpool"]
