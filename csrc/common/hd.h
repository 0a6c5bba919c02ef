// RESID_HD marks per-element helpers shared by the CPU and CUDA twins of a kernel.
// Under nvcc it expands to __host__ __device__; in plain C++ builds it expands to nothing,
// so this header never pulls a CUDA header into the CPU-only build.
#pragma once

#if defined(__CUDACC__)
#define RESID_HD __host__ __device__
#else
#define RESID_HD
#endif
