// CPU helpers around the balanced-assignment kernel that torch does slowly:
//   * select_candidates_cpu: each row's m smallest entries of a GEMM tile, fused with the
//     exact-distance cache fill (torch.topk on [tile, K] plus four elementwise passes took
//     ~35% of a GAOQ fit; one pass over the tile here, rows in parallel).
//   * cluster_sums_cpu: per-cluster row sums in row order (deterministic), columns split
//     across threads (sort + gather + segment_reduce copied all of x every Lloyd step).
// Both are CPU only: on CUDA the wrapper keeps torch's topk and one-hot GEMM sums.
#include "balanced/candidates.h"

#include <algorithm>

namespace resid {

void select_candidates_cpu(const float* part, int64_t t, int64_t K, const float* xn, const float* p0, int64_t m,
                           int32_t* cand_idx, float* cand_dist, int64_t ld, float* cache, int64_t cache_rows) {
  const int64_t mk = std::min(m, K);
#ifdef RESID_WITH_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int64_t i = 0; i < t; ++i) {
    const float* row = part + i * K;
    const float xi = xn[i];
    if (i < cache_rows) {
      float* cr = cache + i * K;
      for (int64_t c = 0; c < K; ++c) {
        const float v = (p0 ? row[c] - p0[c] : row[c]) + xi;
        cr[c] = v > 0.f ? v : 0.f;
      }
    }
    // Sorted insertion of (value, index) into the m best; ties: lower index first.
    float* w = cand_dist + i * ld;  // ranking values while selecting
    int32_t* ci = cand_idx + i * ld;
    int64_t cnt = 0;
    for (int64_t c = 0; c < K; ++c) {
      const float v = row[c];
      if (cnt == mk && !(v < w[mk - 1])) continue;  // later index loses ties
      int64_t pos = cnt < mk ? cnt++ : mk - 1;
      while (pos > 0 && v < w[pos - 1]) {
        w[pos] = w[pos - 1];
        ci[pos] = ci[pos - 1];
        --pos;
      }
      w[pos] = v;
      ci[pos] = static_cast<int32_t>(c);
    }
    for (int64_t j = 0; j < mk; ++j) {
      const float v = (p0 ? w[j] - p0[ci[j]] : w[j]) + xi;
      w[j] = v > 0.f ? v : 0.f;  // squared distance, clamped against round-off
    }
  }
}

void cluster_sums_cpu(const float* x, const int64_t* labels, int64_t n, int64_t d, int64_t k, float* out) {
  std::fill(out, out + k * d, 0.f);
  // Column blocks of 16 floats per task: each thread sums all rows, in order, for its columns.
  const int64_t blocks = (d + 15) / 16;
#ifdef RESID_WITH_OPENMP
#pragma omp parallel for schedule(static)
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
