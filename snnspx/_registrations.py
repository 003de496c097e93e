"""Python-side registrations (fake kernels, autograd) for the compiled ops.

They need the schemas, so they run right after the ``cpu`` library is loaded
(see :mod:`snnspx._build`), once per process.
"""

from __future__ import annotations

_done = False


def register_all() -> None:
    global _done
    if _done:
        return
    _done = True
    from .functional import fused, srm, suppix

    srm._register()
    suppix._register()
    fused._register()
