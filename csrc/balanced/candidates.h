// CPU helpers of the balanced-assignment wrapper (see candidates_cpu.cpp).
#pragma once

#include <cstdint>

namespace resid {

// part: [t, K] ranking values (||c||^2 + p0 - 2 x.c; the row constant ||x||^2 left out);
// xn: [t] ||x||^2; p0: [K] prices included in part, or nullptr. Writes each row's min(m, K)
// smallest (ties: lower index), in no particular order, into cand_idx / cand_dist (rows of stride ld) as
// cluster indices and exact squared distances (part - p0 + xn, clamped at 0). Rows run in
// parallel on `threads` OpenMP threads (0: the OpenMP default; 1 from a caller's own pool).
void select_candidates_cpu(const float* part, int64_t t, int64_t K, const float* xn, const float* p0, int64_t m,
                           int32_t* cand_idx, float* cand_dist, int64_t ld, int threads);

// out [k, d] = per-cluster sums of the rows of x [n, d] by labels [n] (each in [0, k)),
// summed in row order (deterministic), column blocks on `threads` OpenMP threads (0: the
// OpenMP default).
void cluster_sums_cpu(const float* x, const int64_t* labels, int64_t n, int64_t d, int64_t k, float* out,
                      int threads);

}  // namespace resid
