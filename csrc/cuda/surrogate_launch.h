// Launchers of the surrogate-mode SRM kernels (surrogate.cu) for their glue (surrogate.cpp).
// Light on purpose: no ATen here, so nvcc never parses torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"

namespace snnspx {
namespace cuda {

// x, spikes: [T, N] of `dtype`; state_in (nullptr: zeros), state_out: [4, N]; consts: [4, Cc]
// (a_m, a_s, c, v_th); all state and constants in the state type (double for Double, else float).
void sg_forward(DType dtype, const void* x, void* spikes, const void* state_in, void* state_out, int64_t T, int64_t N,
                const void* consts, int64_t Cc, int64_t P, double a_g, bool fire_ge, cudaStream_t stream);

// The number of checkpointed segments of the backward (its scratch is [3 * count, N]).
int64_t sg_backward_segments(int64_t T);

// Everything in the state type `acc` (Float or Double): x, grad, grad_x [T, N]; state_in,
// grad_state (nullptr: none), grad_state_in, partials (nullptr: not wanted) [4, N]; scratch
// [3 * sg_backward_segments(T), N].
// kind: the Surrogate of ../surrogate_core.h.
void sg_backward(DType acc, int kind, bool detach, const void* x, const void* grad, const void* state_in,
                 const void* grad_state, void* grad_x, void* grad_state_in, void* partials, void* scratch,
                 const void* consts, int64_t T, int64_t N, int64_t Cc, int64_t P, double a_g, bool fire_ge,
                 double alpha, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
