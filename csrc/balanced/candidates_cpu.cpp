// CPU helpers around the balanced-assignment kernel that torch does slowly:
//   * select_candidates_cpu: each row's m smallest entries of a GEMM tile with their exact
//     distances (torch.topk on [tile, K] plus four elementwise passes took ~35% of a GAOQ
//     fit; here the kernel's branch-light select_smallest per row, rows in parallel).
//   * cluster_sums_cpu: per-cluster row sums in row order (deterministic), columns split
//     across threads (sort + gather + segment_reduce copied all of x every Lloyd step).
// Both are CPU only: on CUDA the wrapper keeps torch's topk and one-hot GEMM sums.
#include "balanced/candidates.h"

#include "balanced/assign_common.h"

#include <algorithm>
#ifdef RESID_WITH_OPENMP
#include <omp.h>
#endif
#include <vector>

namespace resid {

namespace {

// Ranking value of cluster c in a GEMM tile row.
struct RowValue {
  const float* row;
  float operator()(int64_t c) const { return row[c]; }
};

}  // namespace

void select_candidates_cpu(const float* part, int64_t t, int64_t K, const float* xn, const float* p0, int64_t m,
                           int32_t* cand_idx, float* cand_dist, int64_t ld, int threads) {
  const int64_t mk = std::min(m, K);
  if (mk <= 0) return;
#ifdef RESID_WITH_OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel if (t * K >= (1 << 16) && threads > 1) num_threads(threads)
#else
  (void)threads;
#endif
  {
    std::vector<float> val(static_cast<size_t>(K));
    std::vector<int32_t> idx(static_cast<size_t>(K));
#ifdef RESID_WITH_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t i = 0; i < t; ++i) {
      int32_t* ci = cand_idx + i * ld;
      float* cd = cand_dist + i * ld;
      // The same selection as the kernel's list refresh (assign_common.h), then the kept
      // ranking values become exact squared distances.
      balanced_detail::select_smallest(RowValue{part + i * K}, K, mk, ci, cd, val.data(), idx.data());
      for (int64_t j = 0; j < mk; ++j) {
        const int32_t c = ci[j];
        const float dist = (p0 ? cd[j] - p0[c] : cd[j]) + xn[i];
        cd[j] = dist > 0.f ? dist : 0.f;  // squared distance, clamped against round-off
      }
    }
  }
}

void cluster_sums_cpu(const float* x, const int64_t* labels, int64_t n, int64_t d, int64_t k, float* out,
                      int threads) {
  std::fill(out, out + k * d, 0.f);
  // Column blocks of 16 floats per task: each thread sums all rows, in order, for its columns.
  const int64_t blocks = (d + 15) / 16;
#ifdef RESID_WITH_OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1 && n * d >= (1 << 16))
#else
  (void)threads;
#endif
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * 16, j1 = std::min(d, j0 + 16);
    for (int64_t i = 0; i < n; ++i) {
      const float* xr = x + i * d;
      float* o = out + labels[i] * d;
      for (int64_t j = j0; j < j1; ++j) o[j] += xr[j];
    }
  }
}

}  // namespace resid
