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

// k-means++ seeding (float64) of the rows x [p, d] (float32, contiguous) into k <= p centres;
// writes their row indices to out [k]. Centre 0 is row `first`; centre t >= 1 is drawn with
// probability proportional to the squared distance to the nearest chosen centre: the first row
// (in index order) whose running sum of those exceeds u[t-1] * total, u [k-1] uniforms in
// [0, 1). When every distance is 0 (all rows coincide with centres) it is the
// floor(u[t-1] * free)-th row not yet chosen. Sequential and deterministic; rows that the new
// centre cannot be nearer to (triangle inequality) are not read.
void kmeanspp_cpu(const float* x, int64_t p, int64_t d, int64_t k, int64_t first, const double* u, int64_t* out);

}  // namespace resid
