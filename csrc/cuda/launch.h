// Launchers exported by the .cu files to the CUDA glue (csrc/cuda/*.cpp).
// Light on purpose: no ATen here, so nvcc never parses torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace snnspx {
namespace cuda {

// Element types understood by the launchers; the glue maps at::ScalarType to these.
enum class DType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// x, spikes: [T, N] of `dtype`; du, dut: [T, N] of float (double for Double).
// packed: du/dut receive the backward's factors (see ../srm_core.h), which use du_inv_clamp
// and max_dudt_inv; otherwise those two are ignored. du == dut == nullptr: the spikes only;
// spikes == nullptr: no spikes (srm_neuron_bwd's recomputation).
void srm_forward(DType dtype, const void* x, void* spikes, void* du, void* dut, int64_t T, int64_t N,
                 double tau_m, double tau_s, double tau_grad, double v_th, double du_inv_clamp,
                 double max_dudt_inv, bool packed, cudaStream_t stream);

// grad, spikes, grad_w, grad_t: [T, N] of `dtype`; du, dut: float (double for Double);
// tables: the kernel tables [epsw | epst], 2*T accumulation-type elements on the device
// (glue.h's srm_tables_cuda makes them on the host, as the CPU backend does, or with
// srm_tables below while a CUDA graph is being captured).
// spikes == nullptr selects the packed form (du/dut hold the factors of srm_forward's packed form);
// grad_t may be nullptr.
void srm_backward(DType dtype, const void* grad, const void* spikes, const void* du, const void* dut,
                  void* grad_w, void* grad_t, const void* tables, int64_t T, int64_t N, double du_inv_clamp,
                  double max_dudt_inv, cudaStream_t stream);

// The same tables computed on the device (one thread per entry; the GPU's pow, within
// about 2 ulp of the host's in float64). acc: Float or Double.
void srm_tables(DType acc, void* tables, int64_t T, double tau_m, double tau_s, double tau_grad,
                cudaStream_t stream);

// spike_input_grad_ (../cpu/layers.cpp): grad and s_in are n contiguous elements of `dtype`;
// grad is finished in place.
void spike_input_grad(DType dtype, void* grad, const void* s_in, int64_t n, double scale, bool mask,
                      cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
