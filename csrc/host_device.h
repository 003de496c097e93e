// The one qualifier of functions that the CPU and CUDA kernels share: host and device
// (force-inlined) under nvcc, plain inline in a C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define SNNSPX_HD __host__ __device__ __forceinline__
#else
#define SNNSPX_HD inline
#endif
