"""What every SRM module shares: its checked neuron constants, the layout flag, the backend."""

from __future__ import annotations

from torch import nn

from .. import _checks


def backend_repr(backend: str | None) -> str:
    """The ``extra_repr`` suffix of a module's `backend`: empty unless one is forced."""
    return "" if backend is None else f", backend={backend!r}"


class SRMModule(nn.Module):
    """Checks and stores ``tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv`` (as floats),
    ``batch_first`` and ``backend`` for SRMNeuron, SRMSupPixPool and the SRM layers."""

    def __init__(self, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, batch_first, backend) -> None:
        super().__init__()
        _checks.check_srm_params(tau_m, tau_s, tau_grad, v_th)
        _checks.check_backward_params(du_inv_clamp, max_dudt_inv)
        _checks.check_backend_name(backend)
        self.tau_m, self.tau_s, self.tau_grad, self.v_th = float(tau_m), float(tau_s), float(tau_grad), float(v_th)
        self.du_inv_clamp, self.max_dudt_inv = float(du_inv_clamp), float(max_dudt_inv)
        self.batch_first = _checks.check_flag(batch_first, "batch_first")
        self.backend = backend

    def _neuron_repr(self) -> str:
        """The neuron constants, the layout flag and a forced backend, for extra_repr."""
        return (
            f"tau_m={self.tau_m}, tau_s={self.tau_s}, tau_grad={self.tau_grad}, v_th={self.v_th}, "
            f"du_inv_clamp={self.du_inv_clamp}, max_dudt_inv={self.max_dudt_inv}, batch_first={self.batch_first}"
            + backend_repr(self.backend)
        )
