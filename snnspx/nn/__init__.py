"""Layers of snnspx: thin modules over :mod:`snnspx.functional`."""

from .neuron import SRMNeuron

__all__ = ["SRMNeuron"]
