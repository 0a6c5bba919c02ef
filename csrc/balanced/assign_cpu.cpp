// CPU twin of balanced assignment (the spec). Contract and algorithm: assign.h and
// assign_common.h. Parallelism: OpenMP across segments (GAOQ solves thousands of small
// problems per call); one segment is solved by one thread because the auction is a
// sequential (Gauss-Seidel) process. The distance-heavy part, the per-point top-m candidate
// lists, is computed by the wrapper with torch's BLAS tile by tile (memory O(tile*K + N*m)):
// a GEMM tile reaches the same FLOP rate as faiss, which a portable C++ loop cannot.
#include "balanced/assign.h"
#include "balanced/assign_common.h"

#ifdef RESID_WITH_OPENMP
#include <omp.h>
#endif

namespace resid {

void balanced_assign_cpu(const BalancedAssignArgs& a, int threads) {
  const int64_t S = a.num_segments;
#ifdef RESID_WITH_OPENMP
  // An explicit count: the wrapper holds torch (and with it OpenMP's default) to one thread
  // for many-segment solves, whose torch ops are small; the segments themselves are not.
  if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (S > 1)
#else
  (void)threads;
#endif
  for (int64_t s = 0; s < S; ++s) balanced_detail::resolve_segment(a, s);
}

}  // namespace resid
