// CUDA twin of balanced assignment. Contract and algorithm: assign.h and assign_common.h.
// The per-segment auction is inherently sequential, so each segment is solved by one thread
// running exactly the CPU twin's routine (identical float operations -> identical labels);
// segments run in parallel across threads. The distance-heavy part (top-m candidates) is
// computed by the wrapper with cuBLAS GEMM tiles through torch on the same stream.
// One large segment on a single GPU thread is slow (100k x 128, K=256 k-means on an H100: 95 s
// against 4.3 s on the host), so the wrapper sends solves with few segments to the CPU twin
// (resid_ext/balanced.py, GPU_AUCTION_MIN_SEGMENTS).
#include <cuda_runtime.h>

#include "balanced/assign.h"
#include "balanced/assign_common.h"
#include "common/check.h"

namespace resid {

__global__ void balanced_assign_kernel(BalancedAssignArgs a) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s < a.num_segments) balanced_detail::resolve_segment(a, s);
}

void balanced_assign_cuda(const BalancedAssignArgs& a, void* stream) {
  if (a.num_segments == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  // Few threads per block: each thread does long, divergent work.
  const int threads = 32;
  const int64_t blocks = (a.num_segments + threads - 1) / threads;
  balanced_assign_kernel<<<static_cast<unsigned>(blocks), threads, 0, st>>>(a);
  RESID_CUDA_CHECK_LAUNCH(st);
}

}  // namespace resid
