// CPU helpers around the balanced-assignment kernel that torch does slowly:
//   * select_candidates_cpu: each row's m smallest entries of a GEMM tile, fused with the
//     exact-distance cache fill (torch.topk on [tile, K] plus four elementwise passes took
//     ~35% of a GAOQ fit; one pass over the tile here, rows in parallel).
//   * cluster_sums_cpu: per-cluster row sums in row order (deterministic), columns split
//     across threads (sort + gather + segment_reduce copied all of x every Lloyd step).
// Both are CPU only: on CUDA the wrapper keeps torch's topk and one-hot GEMM sums.
#include "balanced/candidates.h"

#include <algorithm>
#include <vector>

namespace resid {

void select_candidates_cpu(const float* part, int64_t t, int64_t K, const float* xn, const float* p0, int64_t m,
                           int32_t* cand_idx, float* cand_dist, int64_t ld, float* cache, int64_t cache_rows) {
  const int64_t mk = std::min(m, K);
  if (mk <= 0) return;
#ifdef RESID_WITH_OPENMP
#pragma omp parallel if (t * K >= (1 << 16))
#endif
  {
    std::vector<float> buf(static_cast<size_t>(K));
#ifdef RESID_WITH_OPENMP
#pragma omp for schedule(static)
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
      // The mk-th smallest value by nth_element on a copy (expected O(K); a sorted insertion
      // costs O(K + mk^2)), then every smaller entry and, in index order, as many entries
      // equal to it as fit: ties go to the lower index whatever nth_element did.
      std::copy(row, row + K, buf.begin());
      std::nth_element(buf.begin(), buf.begin() + (mk - 1), buf.end());
      const float thr = buf[static_cast<size_t>(mk - 1)];
      int64_t below = 0;
      for (int64_t c = 0; c < K; ++c) below += row[c] < thr;
      int64_t ties = mk - below, cnt = 0;
      int32_t* ci = cand_idx + i * ld;
      float* cd = cand_dist + i * ld;
      for (int64_t c = 0; c < K && cnt < mk; ++c) {
        const float v = row[c];
        if (v < thr || (v == thr && ties-- > 0)) {
          const float dist = (p0 ? v - p0[c] : v) + xi;
          ci[cnt] = static_cast<int32_t>(c);
          cd[cnt++] = dist > 0.f ? dist : 0.f;  // squared distance, clamped against round-off
        }
      }
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
