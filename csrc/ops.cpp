// Operator schemas of the snnspx library: declared once here, implemented per
// device in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cpp (CUDA).
#include <torch/library.h>

#include "kernel_counter.h"

TORCH_LIBRARY(snnspx, m) {
  // docs/maths.md §2: one pass over T. Returns (spikes, du, dut); du and dut are float32
  // for float32/float16/bfloat16 inputs and float64 for float64 inputs.
  m.def("srm_forward(Tensor x, float tau_m, float tau_s, float tau_grad, float v_th)"
        " -> (Tensor, Tensor, Tensor)");
  // docs/maths.md §3: the event-driven backward. Returns (grad_w, grad_t).
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
  // docs/maths.md §5, superpixel pooling, on canonical layouts (see suppix_glue.h):
  // x [T, B, C, P], labels [L, Bl, P] int32/int64 with L in {1, T}, Bl in {1, B};
  // negative labels are ignored pixels. mode: "sum" | "avg" | "max" | "avg_spike"
  // ("avg" whose backward is the spike form g / m). Returns (y [T, B, C, K], aux int32):
  // aux = counts [L, Bl, K] for sum/avg, argmax [T, B, C, K] (-1 where empty) for max,
  // m = non-zero inputs [T, B, C, K] for avg_spike. check_labels: fail on a label >= K
  // (on a GPU: one read-back); without it such labels are ignored, never out of bounds.
  // Deterministic: every sum has a fixed order on every run.
  m.def("suppix_pool(Tensor x, Tensor labels, int num_superpixels, str mode, bool check_labels)"
        " -> (Tensor, Tensor)");
  // The backward of suppix_pool for x: grad_x [T, B, C, P] from grad_y [T, B, C, K] and the
  // forward's aux (unused for "sum").
  m.def("suppix_pool_backward(Tensor grad_y, Tensor labels, Tensor aux, str mode) -> Tensor");
  // z[t, b, c, p] = y[t, b, c, labels[p]], 0 for ignored pixels: [T, B, C, P] from y [T, B, C, K].
  m.def("suppix_unpool(Tensor y, Tensor labels, bool check_labels) -> Tensor");
  // Pixels per superpixel: int32 [L, Bl, K] (labels outside [0, K) are not counted).
  m.def("suppix_counts(Tensor labels, int num_superpixels) -> Tensor");
  // docs/maths.md §6: SRM neuron + superpixel pooling in one pass, for the op's flattened
  // form: x [T, B, C, P] currents, labels [L, LB, P] (L in {1, T}, LB in {1, B};
  // negative = no superpixel), mode "sum" | "avg" | "max". Returns y [T, B, C, K]
  // in x's dtype; writes no [T, B, C, P] tensor. check_labels: fail on a label >= K
  // (read back after the kernels are queued); false ignores such pixels.
  m.def("srm_suppix_pool(Tensor x, Tensor labels, int num_superpixels, str mode, float tau_m, float tau_s,"
        " float tau_grad, float v_th, bool check_labels) -> Tensor");
  // Training variant: (y, saved, counts, argmax). saved is srm_neuron_fwd's
  // compact state [2, T, B, C, P]; counts int32 [L, LB, K] pixels per superpixel;
  // argmax int32 [T, B, C, K], the lowest spiking pixel (-1: none), for "max"
  // (empty otherwise).
  m.def("srm_suppix_pool_fwd(Tensor x, Tensor labels, int num_superpixels, str mode, float tau_m, float tau_s,"
        " float tau_grad, float v_th, float du_inv_clamp, float max_dudt_inv, bool check_labels)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  // dL/dx [T, B, C, P] from dL/dy: docs/maths.md §5's pooling backward composed with §3's grad_w.
  m.def("srm_suppix_pool_bwd(Tensor grad_y, Tensor saved, Tensor labels, Tensor counts, Tensor argmax, str mode,"
        " float tau_m, float tau_s, float tau_grad) -> Tensor");
  // Test sentinel: how many times the named compiled kernel has run in this
  // process, e.g. "cpu.srm_forward".
  m.def("_kernel_calls(str name) -> int", &snnspx::kernel_calls);
}
