// Error macros. User-facing validation lives in resid_ext/_validate.py; C++ trusts its
// inputs and only asserts internal invariants (RESID_DCHECK, debug builds).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

// A check that must live in C++ and names the argument: raised in Python as ValueError.
#define RESID_CHECK(cond, msg)                                   \
  do {                                                           \
    if (!(cond)) {                                               \
      std::ostringstream resid_os_;                              \
      resid_os_ << msg;                                          \
      throw std::invalid_argument(resid_os_.str());              \
    }                                                            \
  } while (0)

#ifdef RESID_DEBUG
#define RESID_DCHECK(cond)                                                              \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      throw std::logic_error(std::string("internal check failed: ") + #cond + " at " + \
                             __FILE__ + ":" + std::to_string(__LINE__));                \
    }                                                                                   \
  } while (0)
#else
#define RESID_DCHECK(cond) \
  do {                     \
  } while (0)
#endif

#if defined(RESID_WITH_CUDA)
#include <cuda_runtime.h>
// CUDA failures: RuntimeError with file, line and the CUDA error string.
#define RESID_CUDA_CHECK(expr)                                                          \
  do {                                                                                  \
    cudaError_t resid_err_ = (expr);                                                    \
    if (resid_err_ != cudaSuccess) {                                                    \
      throw std::runtime_error(std::string("CUDA error at ") + __FILE__ + ":" +         \
                               std::to_string(__LINE__) + ": " +                        \
                               cudaGetErrorString(resid_err_));                         \
    }                                                                                   \
  } while (0)
// After every launch; synchronous when built with RESID_CUDA_SYNC=1 (debugging).
#if defined(RESID_CUDA_SYNC)
#define RESID_CUDA_CHECK_LAUNCH(stream)            \
  do {                                             \
    RESID_CUDA_CHECK(cudaGetLastError());          \
    RESID_CUDA_CHECK(cudaStreamSynchronize(stream)); \
  } while (0)
#else
#define RESID_CUDA_CHECK_LAUNCH(stream) RESID_CUDA_CHECK(cudaGetLastError())
#endif
#endif
