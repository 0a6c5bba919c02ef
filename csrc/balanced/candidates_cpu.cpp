// CPU helpers around the balanced-assignment kernel that torch does slowly:
//   * select_candidates_cpu: each row's m smallest entries of a GEMM tile with their exact
//     distances (torch.topk on [tile, K] plus four elementwise passes took ~35% of a GAOQ
//     fit; here branch-light passes over each row, rows in parallel).
//   * cluster_sums_cpu: per-cluster row sums in row order (deterministic), columns split
//     across threads (sort + gather + segment_reduce copied all of x every Lloyd step).
// Both are CPU only: on CUDA the wrapper keeps torch's topk and one-hot GEMM sums.
#include "balanced/candidates.h"

#include <algorithm>
#ifdef RESID_WITH_OPENMP
#include <omp.h>
#endif
#include <vector>

namespace resid {

namespace {

// Filter row[0..K) down to a superset of its mk smallest entries (1 <= mk <= K): fills
// val/idx with the kept entries in index order and returns their count (>= mk).
// Split the row into mk interleaved groups (group j holds c = j, j + mk, ...); the largest
// group minimum t0 is at least the mk-th smallest value, since the mk group minima are mk
// distinct entries <= t0, so keeping the entries <= t0 (typically 2-3 mk of them) loses
// none. Both loops are branch-free and vectorise; with K < 4 mk there is little to filter
// and every entry is kept. gmin needs mk floats.
int64_t filter_smallest(const float* row, int64_t K, int64_t mk, float* gmin, float* val, int32_t* idx,
                        float* lo, float* hi) {
  float t0 = 3.0e38f;
  if (K >= 4 * mk) {
    std::copy(row, row + mk, gmin);
    int64_t c = mk;
    for (; c + mk <= K; c += mk) {
      const float* r = row + c;
      for (int64_t j = 0; j < mk; ++j) gmin[j] = r[j] < gmin[j] ? r[j] : gmin[j];
    }
    for (int64_t j = 0; c + j < K; ++j) gmin[j] = row[c + j] < gmin[j] ? row[c + j] : gmin[j];
    t0 = gmin[0];
    for (int64_t j = 1; j < mk; ++j) t0 = gmin[j] > t0 ? gmin[j] : t0;
  }
  // Every kept entry lies in [lo, hi]: the row minimum (the smallest group minimum), and t0.
  float vlo = row[0], vhi = row[0];
  if (K >= 4 * mk) {
    vlo = gmin[0];
    for (int64_t j = 1; j < mk; ++j) vlo = gmin[j] < vlo ? gmin[j] : vlo;
    vhi = t0;
  } else {
    for (int64_t k = 1; k < K; ++k) {
      vlo = row[k] < vlo ? row[k] : vlo;
      vhi = row[k] > vhi ? row[k] : vhi;
    }
  }
  *lo = vlo;
  *hi = vhi;
  int64_t cnt = 0;
  for (int64_t k = 0; k < K; ++k) {
    val[cnt] = row[k];
    idx[cnt] = static_cast<int32_t>(k);
    cnt += (K < 4 * mk) | (row[k] <= t0);
  }
  return cnt;
}


// The mk-th smallest of val[0..cnt) (mk <= cnt), all within [lo, hi]: a 64-bucket histogram
// over [lo, hi] finds the bucket holding it (the bucket index is monotone in the value, as
// subtracting lo and scaling by a positive constant are), and only that bucket's few
// entries go through nth_element. nth_element on all ~100 filtered entries of a K = 256 row
// mispredicted its way to 1 us per row. sel needs cnt floats.
float kth_smallest(const float* val, int64_t cnt, int64_t mk, float lo, float hi, float* sel) {
  constexpr int kBuckets = 64;
  const float scale = static_cast<float>(kBuckets) / (hi - lo);
  if (!(hi > lo) || !(scale < 3.0e38f)) {  // a (near-)constant range: plain select
    std::copy(val, val + cnt, sel);
    std::nth_element(sel, sel + (mk - 1), sel + cnt);
    return sel[mk - 1];
  }
  int32_t hist[kBuckets] = {0};
  for (int64_t j = 0; j < cnt; ++j) {
    const int b = static_cast<int>((val[j] - lo) * scale);
    hist[b < kBuckets - 1 ? b : kBuckets - 1] += 1;
  }
  int64_t below = 0;
  int bk = 0;
  while (below + hist[bk] < mk) below += hist[bk++];
  int64_t n = 0;
  for (int64_t j = 0; j < cnt; ++j) {
    int b = static_cast<int>((val[j] - lo) * scale);
    b = b < kBuckets - 1 ? b : kBuckets - 1;
    sel[n] = val[j];
    n += b == bk;
  }
  const int64_t r = mk - below;  // 1-based rank inside the bucket
  std::nth_element(sel, sel + (r - 1), sel + n);
  return sel[r - 1];
}

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
    std::vector<float> gmin(static_cast<size_t>(mk)), val(static_cast<size_t>(K)), sel(static_cast<size_t>(K));
    std::vector<int32_t> idx(static_cast<size_t>(K)), tk(static_cast<size_t>(K));
#ifdef RESID_WITH_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t i = 0; i < t; ++i) {
      const float* row = part + i * K;
      const float xi = xn[i];
      float lo, hi;
      const int64_t cnt = filter_smallest(row, K, mk, gmin.data(), val.data(), idx.data(), &lo, &hi);
      // The mk-th smallest value thr; keep every entry below it, then, in index order, as
      // many entries equal to it as fit: ties go to the lower index.
      const float thr = kth_smallest(val.data(), cnt, mk, lo, hi, sel.data());
      int64_t below = 0;
      for (int64_t j = 0; j < cnt; ++j) below += val[j] < thr;
      int64_t ties = mk - below, out = 0;
      // Branch-free compaction (which entries are taken is unpredictable), into row buffers
      // with one spare slot for the write past the last taken entry.
      for (int64_t j = 0; j < cnt; ++j) {
        const float v = val[j];
        const bool tie = v == thr && ties > 0;
        sel[out] = v;
        tk[out] = idx[j];
        out += (v < thr) | tie;
        ties -= tie;
      }
      int32_t* ci = cand_idx + i * ld;
      float* cd = cand_dist + i * ld;
      for (int64_t j = 0; j < mk; ++j) {
        const int32_t c = tk[j];
        const float dist = (p0 ? sel[j] - p0[c] : sel[j]) + xi;
        ci[j] = c;
        cd[j] = dist > 0.f ? dist : 0.f;  // squared distance, clamped against round-off
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
