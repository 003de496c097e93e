// Operator schemas of the snnspx library: declared once here, implemented per
// device in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cpp (CUDA).
#include <torch/library.h>

#include "kernel_counter.h"

TORCH_LIBRARY(snnspx, m) {
  // SPEC §2: one pass over T. Returns (spikes, du, dut); du and dut are float32
  // for float32/float16/bfloat16 inputs and float64 for float64 inputs.
  m.def("srm_forward(Tensor x, float tau_m, float tau_s, float tau_grad, float v_th)"
        " -> (Tensor, Tensor, Tensor)");
  // SPEC §3: the event-driven backward. Returns (grad_w, grad_t).
  m.def("srm_backward(Tensor grad_spikes, Tensor spikes, Tensor du, Tensor dut, float tau_m,"
        " float tau_s, float tau_grad, float du_inv_clamp, float max_dudt_inv) -> (Tensor, Tensor)");
  // The autograd pair behind functional.srm_neuron. srm_neuron_fwd returns
  // (spikes, saved), saved = [2, *x.shape]: at spike steps the backward's factors
  // clamp(-1/du, -du_inv_clamp, 0) and clamp(-1/dut, -max_dudt_inv, 0) (never
  // positive); at silent steps +1 and 0, so saved[0] doubles as the spike mask.
  // 8 bytes per float32 neuron-step instead of the 12 of (spikes, du, dut).
  m.def("srm_neuron_fwd(Tensor x, float tau_m, float tau_s, float tau_grad, float v_th,"
        " float du_inv_clamp, float max_dudt_inv) -> (Tensor, Tensor)");
  m.def("srm_neuron_bwd(Tensor grad_spikes, Tensor saved, float tau_m, float tau_s, float tau_grad,"
        " float du_inv_clamp, float max_dudt_inv) -> Tensor");
  // Test sentinel: how many times the named compiled kernel has run in this
  // process, e.g. "cpu.srm_forward".
  m.def("_kernel_calls(str name) -> int", &snnspx::kernel_calls);
}
