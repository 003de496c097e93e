"""Functional form of every snnspx operator.

Each op takes ``backend: str | None = None``: ``"cuda"``, ``"cpp"``, ``"torch"``
or ``"reference"``; None picks one as :func:`snnspx.backends` explains.
"""

from .srm import srm_backward, srm_forward, srm_neuron
from .suppix import suppix_counts, suppix_pool, suppix_unpool

__all__ = ["srm_forward", "srm_backward", "srm_neuron", "suppix_pool", "suppix_unpool", "suppix_counts"]
