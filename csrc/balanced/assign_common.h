// Per-segment balanced-assignment routine shared verbatim by the CPU twin (OpenMP over
// segments) and the CUDA twin (one thread per segment). Everything is RESID_HD, sequential
// and uses one float summation order, so both twins give identical labels.
//
// Algorithm (per segment, n points, K clusters with capacities): Bertsekas' auction for the
// transportation problem ("similar objects"), on each point's m candidate clusters.
//   * Prices start at price0 (0, a sampled estimate, or the previous Lloyd iteration's) and
//     only rise: a bounded cluster (0 < cap < n) keeps a min-heap of the bids it holds and,
//     once full, costs its lowest held bid; before that it costs its reserve price.
//   * An unassigned point bids for its best candidate k1 (cost d + price), raising the
//     price by (second best - best) + eps; a full cluster evicts its lowest bidder.
//   * Epsilon scaling: eps from the candidate distance spread / 4 down by 8x per phase to
//     scale / eps_div (scale = mean nearest-candidate distance; eps_div 512 by default, 2 for
//     the intermediate Lloyd iterations, 0.5 for a Lloyd run's first solve). Each phase takes
//     the previous phase's prices as reserves and keeps every point whose cluster still satisfies eps-CS at the new eps (it
//     holds the bid it would make now); only the others bid. A warm start (labels and prices
//     of the previous Lloyd iteration) keeps points the same way from the first phase and
//     starts at scale/8 when fewer than n/10 points violate eps-CS there (else wide).
//     The final phase is eps-optimal: cost <= optimum + n*eps (about 0.2% at eps_div 512).
//   * Candidates are the m clusters with the smallest d + price0. Prices never fall (until
//     the clean-up rounds below), so every other cluster costs at least the m-th candidate's
//     d + price0 (bound[i]), the outside option in each bid. When a point's best candidate
//     costs more than bound[i], its list is refreshed in place: its distances to all K
//     clusters of its segment (read from the wrapper's cache of GEMM rows when the point has
//     one, else K*d flops), the m smallest d + current price kept (select_smallest), and
//     bound[i] raised to the new m-th value.
//   * A cluster left with room must cost 0: clean-up rounds drop such reserves to 0, mark
//     the cluster, let every point also consider marked clusters (exact distances), and redo
//     the final phase until none is left (at most K rounds). With sum(cap) == n every
//     cluster is full and no round runs.
// Termination: prices only rise within a phase and each bid raises one by >= max(eps, one
// ulp); a bid budget is a belt-and-braces guard (points left when it runs out are placed on
// their exactly nearest cluster with room, which exists as sum(cap) >= n).
#pragma once

#include <math.h>
#include <stdint.h>

#include "balanced/assign.h"
#include "common/hd.h"

namespace resid {
namespace balanced_detail {

constexpr float kInf = 3.0e38f;
constexpr int32_t kUnassigned = -1;
constexpr int32_t kFallback = -2;
// A warm start refines from scale/8 when fewer than n / kWarmViolatorsDiv points violate
// eps-CS at that eps, else it starts wide like a cold solve.
constexpr int64_t kWarmViolatorsDiv = 10;

// Round-to-nearest mul/add without FMA contraction, so both twins sum identically.
RESID_HD inline float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RESID_HD inline float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// Squared Euclidean distance in a fixed order both twins share: 8 interleaved partial sums
// (lane l sums j = l, l+8, ...), then combined pairwise. Eight independent chains let the
// CPU compiler vectorise the loop (one sequential chain runs at one add per FP latency,
// which made list refreshes the auction's main cost).
RESID_HD inline float row_sq_dist(const float* xr, const float* cr, int64_t d) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    for (int l = 0; l < 8; ++l) {
      const float t = xr[j + l] - cr[j + l];
      acc[l] = fadd(acc[l], fmul(t, t));
    }
  }
  for (int l = 0; j + l < d; ++l) {
    const float t = xr[j + l] - cr[j + l];
    acc[l] = fadd(acc[l], fmul(t, t));
  }
  const float a01 = fadd(acc[0], acc[1]), a23 = fadd(acc[2], acc[3]);
  const float a45 = fadd(acc[4], acc[5]), a67 = fadd(acc[6], acc[7]);
  return fadd(fadd(a01, a23), fadd(a45, a67));
}

// Hint that point row's list and bound will be read soon (no-op on the device). A bid waits
// on memory (lists: 256 B per point at m = 32, spread over the whole segment), so the next
// bidder's lines are requested early: on an eviction before the heap sift (the evicted
// point bids next), and on a pop for the point below it on the stack. Measured at 1M x 128,
// K=256, one thread: a rough solve 7.7 -> 6.8 s, a fine one 10.0 -> 7.9 s, same labels.
// (Prefetching the evicted point's 1 KiB cache row as well was slower.)
RESID_HD inline void prefetch_point(const BalancedAssignArgs& a, int64_t row) {
#if !defined(__CUDA_ARCH__)
  const char* ci = reinterpret_cast<const char*>(a.cand_idx + row * a.m);
  const char* cd = reinterpret_cast<const char*>(a.cand_dist + row * a.m);
  const int64_t bytes = a.m * static_cast<int64_t>(sizeof(float));  // = sizeof(int32_t)
  for (int64_t b = 0; b < bytes; b += 64) {
    __builtin_prefetch(ci + b);
    __builtin_prefetch(cd + b);
  }
  __builtin_prefetch(a.bound + row);
#else
  (void)a;
  (void)row;
#endif
}

// Tie rule everywhere: lower value first, then lower index.
RESID_HD inline bool before(float v1, int64_t i1, float v2, int64_t i2) {
  return v1 < v2 || (v1 == v2 && i1 < i2);
}

// Min-heap of (bid, point) pairs in bid[0..size), pt[0..size).
RESID_HD inline void heap_sift_up(float* bid, int32_t* pt, int64_t pos) {
  while (pos > 0) {
    const int64_t parent = (pos - 1) / 2;
    if (!before(bid[pos], pt[pos], bid[parent], pt[parent])) break;
    const float tb = bid[pos]; bid[pos] = bid[parent]; bid[parent] = tb;
    const int32_t tp = pt[pos]; pt[pos] = pt[parent]; pt[parent] = tp;
    pos = parent;
  }
}

RESID_HD inline void heap_sift_down(float* bid, int32_t* pt, int64_t size, int64_t pos) {
  for (;;) {
    const int64_t l = 2 * pos + 1, r = l + 1;
    int64_t best = pos;
    if (l < size && before(bid[l], pt[l], bid[best], pt[best])) best = l;
    if (r < size && before(bid[r], pt[r], bid[best], pt[best])) best = r;
    if (best == pos) return;
    const float tb = bid[pos]; bid[pos] = bid[best]; bid[best] = tb;
    const int32_t tp = pt[pos]; pt[pos] = pt[best]; pt[best] = tp;
    pos = best;
  }
}

// One segment's view of the arguments (global cluster index = k0 + local).
struct Segment {
  int64_t s, n0, n, k0, K;
};

RESID_HD inline bool is_bounded(const BalancedAssignArgs& a, int64_t kg) {
  return a.heap_offsets[kg + 1] > a.heap_offsets[kg];
}

RESID_HD inline bool is_full(const BalancedAssignArgs& a, int64_t kg) {
  return a.count[kg] >= a.capacity[kg];
}

// Current price of cluster kg: lowest held bid once a bounded cluster is full, else reserve.
// Bids and refreshes read it from a.cur_price, which place() and each phase's reset keep equal
// to this (one load per candidate instead of four scattered ones: ~half the auction's time).
RESID_HD inline float current_price(const BalancedAssignArgs& a, int64_t kg) {
  if (is_bounded(a, kg) && is_full(a, kg)) return a.heap_bid[a.heap_offsets[kg]];
  return a.price[kg];
}

// Offer cluster c (local) at cost w to the running best two.
RESID_HD inline void offer(float w, int32_t c, int32_t* k1, float* b1, float* b2) {
  if (*k1 < 0 || before(w, c, *b1, *k1)) {
    *b2 = *b1;
    *b1 = w;
    *k1 = c;
  } else if (w < *b2) {
    *b2 = w;
  }
}

// Best and second-best priced option of point row (global row index). Returns k1 (local)
// or -1 when no option has capacity; *last receives the outside-option bound.
RESID_HD inline int32_t best_two(const BalancedAssignArgs& a, const Segment& sg, int64_t row,
                                 bool any_dropped, float base, float* w1, float* w2,
                                 float* last) {
  const int32_t* ci = a.cand_idx + row * a.m;
  const float* cd = a.cand_dist + row * a.m;
  const float* xr = a.x + row * a.d;
  int32_t k1 = -1;
  float b1 = kInf, b2 = kInf;
  for (int64_t j = 0; j < a.m; ++j) {
    const int32_t c = ci[j];
    if (c < 0) break;
    const int64_t kg = sg.k0 + c;
    if (a.capacity[kg] == 0) continue;
    offer(fadd(cd[j], a.cur_price[kg]), c, &k1, &b1, &b2);
  }
  if (any_dropped) {
    // Dropped clusters may now cost less than `last`: consider them exactly.
    for (int64_t c = 0; c < sg.K; ++c) {
      const int64_t kg = sg.k0 + c;
      if (!a.dropped[kg] || a.capacity[kg] == 0) continue;
      bool listed = false;
      for (int64_t j = 0; j < a.m && ci[j] >= 0; ++j) listed = listed || (ci[j] == c);
      if (listed) continue;
      const float w = fadd(row_sq_dist(xr, a.centroids + kg * a.d, a.d), a.cur_price[kg]);
      offer(w, static_cast<int32_t>(c), &k1, &b1, &b2);
    }
  }
  *w1 = b1;
  *w2 = b2;
  *last = a.bound[row] - base;
  return k1;
}

// Place point i (local) in cluster c (local) with the given bid; returns the evicted point
// (local) or -1.
RESID_HD inline int32_t place(const BalancedAssignArgs& a, const Segment& sg, int32_t i, int32_t c,
                              float bid) {
  const int64_t kg = sg.k0 + c;
  int32_t evicted = -1;
  if (!is_bounded(a, kg)) {
    a.count[kg] += 1;
  } else {
    float* hb = a.heap_bid + a.heap_offsets[kg];
    int32_t* hp = a.heap_pt + a.heap_offsets[kg];
    if (!is_full(a, kg)) {
      const int64_t pos = a.count[kg];
      hb[pos] = bid;
      hp[pos] = i;
      a.count[kg] += 1;
      heap_sift_up(hb, hp, pos);
    } else {
      evicted = hp[0];
      prefetch_point(a, sg.n0 + evicted);
      hb[0] = bid;
      hp[0] = i;
      heap_sift_down(hb, hp, a.count[kg], 0);
    }
  }
  a.labels[sg.n0 + i] = c;
  a.cur_price[kg] = current_price(a, kg);
  return evicted;
}

// Rank of value v in a histogram of kHistBuckets buckets over [lo, lo + kHistBuckets / scale]:
// monotone in v (subtracting lo and scaling by a positive constant are), so an entry in a
// lower bucket is strictly smaller than any entry in a higher one.
constexpr int kHistBuckets = 64;
// select_smallest refines a crowded boundary bucket at most this many times, and stops once
// at most kSelectInsertMax entries are left for its final sorted insertion.
constexpr int kSelectLevels = 4;
constexpr int64_t kSelectInsertMax = 8;
constexpr int64_t kSelectBucketCache = 512;
RESID_HD inline int hist_bucket(float v, float lo, float scale) {
  const int b = static_cast<int>(fmul(v - lo, scale));
  return b < kHistBuckets - 1 ? b : kHistBuckets - 1;
}

// The min(m, K) smallest w(c), c in [0, K) (ties: lower index), into ci / cw in no
// particular order; returns the largest kept w. Shared by list refreshes (both twins) and
// the CPU candidate step (candidates_cpu.cpp). Branch-light passes instead of a sorted
// insertion or nth_element over the row (both mispredict their way to ~3 us per K = 256
// row): (1) the row split into mk interleaved groups: the largest group minimum t0 bounds
// the mk-th smallest from above (the group minima are mk distinct entries <= t0); (2) the
// entries <= t0 (typically 2-3 mk of them) compacted, branch-free, into val / idx (K-entry
// workspaces); (3) a histogram of those finds the bucket holding the mk-th smallest; entries
// of lower buckets are kept outright and that bucket's entries are compacted for the next
// level, a histogram over their own range, until few are left (or all are equal): a sorted
// insertion picks among those. With K < 4 mk there is little to filter and every entry
// enters step 3. The levels matter at an auction's equilibrium: prices make d + price
// nearly equal across the clusters that share a dense region, so one bucket may hold most
// of the entries (one level and an insertion cost ~1.7 us per K = 256 refresh there).
// cw[0..mk) doubles as the group-minimum scratch. W: RESID_HD float operator()(int64_t).
template <typename W>
RESID_HD inline float select_smallest(const W& w, int64_t K, int64_t mk, int32_t* ci, float* cw, float* val,
                                      int32_t* idx) {
  float lo = kInf, t0 = -kInf;
  if (K >= 4 * mk) {
    for (int64_t j = 0; j < mk; ++j) cw[j] = w(j);
    int64_t c0 = mk;
    for (; c0 + mk <= K; c0 += mk) {  // whole groups: a loop the compiler vectorises
      for (int64_t j = 0; j < mk; ++j) {
        const float v = w(c0 + j);
        cw[j] = v < cw[j] ? v : cw[j];
      }
    }
    for (int64_t j = 0; c0 + j < K; ++j) {
      const float v = w(c0 + j);
      cw[j] = v < cw[j] ? v : cw[j];
    }
    for (int64_t j = 0; j < mk; ++j) {
      lo = cw[j] < lo ? cw[j] : lo;
      t0 = cw[j] > t0 ? cw[j] : t0;
    }
  } else {
    for (int64_t c = 0; c < K; ++c) {
      const float v = w(c);
      lo = v < lo ? v : lo;
      t0 = v > t0 ? v : t0;
    }
  }
  int64_t cnt = 0;
  for (int64_t c = 0; c < K; ++c) {  // branch-free compaction, index order
    const float v = w(c);
    val[cnt] = v;
    idx[cnt] = static_cast<int32_t>(c);
    cnt += v <= t0;
  }
  // Levels: val / idx[0..cnt) (index order) hold the entries still in question, within
  // [lo, hi]; r more are to be kept after ci / cw[0..out).
  int64_t out = 0, r = mk;
  float hi = t0;
  for (int level = 0; level < kSelectLevels && cnt > r && cnt > kSelectInsertMax; ++level) {
    const float scale = static_cast<float>(kHistBuckets) / (hi - lo);
    if (!(hi > lo) || !(scale < kInf)) break;  // all equal (ties go by index below)
    // Two interleaved histograms: consecutive entries often share a bucket, and one
    // counter's increments would wait on each other. Buckets are kept for the pass below
    // when they fit kSelectBucketCache bytes.
    int32_t hist[2][kHistBuckets];
    for (int b = 0; b < kHistBuckets; ++b) hist[0][b] = hist[1][b] = 0;
    uint8_t bkt[kSelectBucketCache];
    const bool cached = cnt <= kSelectBucketCache;
    for (int64_t j = 0; j < cnt; ++j) {
      const int b = hist_bucket(val[j], lo, scale);
      if (cached) bkt[j] = static_cast<uint8_t>(b);
      hist[j & 1][b] += 1;
    }
    int64_t below = 0;
    int bk = 0;
    while (below + hist[0][bk] + hist[1][bk] < r) {
      below += hist[0][bk] + hist[1][bk];
      ++bk;
    }
    // Lower buckets are kept outright, bucket bk's entries stay (in place: nb <= j), both by
    // branch-free compactions (which entries qualify is unpredictable). A write past the
    // last kept entry lands in slot out + below < mk, which later entries overwrite.
    int64_t nb = 0;
    float nlo = kInf, nhi = -kInf;
    for (int64_t j = 0; j < cnt; ++j) {
      const float v = val[j];
      const int32_t c = idx[j];
      const int b = cached ? bkt[j] : hist_bucket(v, lo, scale);
      ci[out] = c;
      cw[out] = v;
      out += b < bk;
      val[nb] = v;
      idx[nb] = c;
      nb += b == bk;
      if (b == bk) {
        nlo = v < nlo ? v : nlo;
        nhi = v > nhi ? v : nhi;
      }
    }
    r -= below;
    cnt = nb;
    lo = nlo;
    hi = nhi;
  }
  // The r smallest by (w, index) of the cnt left, by sorted insertion into cw[out..out + r)
  // (indices ascend, so ties keep the lower one).
  const int64_t base = out;
  int64_t tail = 0;
  for (int64_t j = 0; j < cnt; ++j) {
    const float v = val[j];
    if (tail == r && !(v < cw[base + r - 1])) continue;
    int64_t pos = tail < r ? base + tail++ : base + r - 1;
    while (pos > base && v < cw[pos - 1]) {
      cw[pos] = cw[pos - 1];
      ci[pos] = ci[pos - 1];
      --pos;
    }
    cw[pos] = v;
    ci[pos] = idx[j];
  }
  return cw[base + r - 1];
}

// Ranking value of cluster c from a cache row: (cache[c] - price0[c]) + price[c].
struct CachedValue {
  const float* cache;
  const float* price0;
  const float* price;
  RESID_HD float operator()(int64_t c) const { return fadd(cache[c] - price0[c], price[c]); }
};

// Refresh point row's list: the min(m, K) clusters of smallest d + current price (ties:
// lower index), exact distances; bound[row] becomes the largest kept d + price.
// Centroids are fixed during a solve, so a point's K distances are kept in the segment's
// share of dist_cache and a refresh only re-ranks them against the new prices: points on
// skewed data are refreshed several times per solve, and each recomputation costs K*d. The
// wrapper's GEMM tiles are the cache rows (as many points as its memory budget allows),
// holding d - ||x||^2 + price0: the ranking drops the row constant ||x||^2, and the kept
// distances add it back. Points without a cache row recompute their distances here.
RESID_HD inline void refresh_list(const BalancedAssignArgs& a, const Segment& sg, int64_t row,
                                  float base) {
  int32_t* ci = a.cand_idx + row * a.m;
  float* cw = a.cand_dist + row * a.m;  // holds d + price while selecting
  const float* xr = a.x + row * a.d;
  const int64_t mk = sg.K < a.m ? sg.K : a.m;
  const float* cache = a.cache_slot[row] < 0
                          ? nullptr
                          : a.dist_cache + a.cache_offsets[sg.s] + a.cache_slot[row] * sg.K;
  a.exact[row] = 1;
  if (cache) {
    const float* p0 = a.price0 + sg.k0;
    const float xn = a.row_norm[row];
    // The ranking values lack the row constant ||x||^2, so the bound (compared with d + price
    // elsewhere) adds it back.
    const CachedValue w{cache, p0, a.cur_price + sg.k0};
    const float w_last = select_smallest(w, sg.K, mk, ci, cw, a.sel_val + sg.k0, a.sel_idx + sg.k0);
    a.bound[row] = fadd(fadd(w_last, xn), base);
    for (int64_t j = 0; j < mk; ++j) {
      const float dist = fadd(cache[ci[j]] - p0[ci[j]], xn);
      cw[j] = dist > 0.f ? dist : 0.f;  // squared distance, clamped against round-off
    }
    return;
  }
  // Uncached: each w costs a K*d distance, so compute it once, into a sorted insertion.
  int64_t cnt = 0;
  for (int64_t c = 0; c < sg.K; ++c) {
    const int64_t kg = sg.k0 + c;
    const float w = fadd(row_sq_dist(xr, a.centroids + kg * a.d, a.d), a.cur_price[kg]);
    if (cnt == mk && !before(w, c, cw[mk - 1], ci[mk - 1])) continue;
    int64_t pos = cnt < mk ? cnt++ : mk - 1;
    while (pos > 0 && before(w, c, cw[pos - 1], ci[pos - 1])) {
      cw[pos] = cw[pos - 1];
      ci[pos] = ci[pos - 1];
      --pos;
    }
    cw[pos] = w;
    ci[pos] = static_cast<int32_t>(c);
  }
  a.bound[row] = fadd(cw[mk - 1], base);
  for (int64_t j = 0; j < mk; ++j) cw[j] = row_sq_dist(xr, a.centroids + (sg.k0 + ci[j]) * a.d, a.d);
}

// The bid of a point for the cluster that costs it `best` (distance + price p) when its best
// other option costs `other`: p + (other - best) + eps, at least one ulp above p. other = kInf
// (a single usable cluster): any positive margin, here scale.
RESID_HD inline float auction_bid(float p, float best, float other, float eps, float scale) {
  if (other >= kInf) other = fadd(best, scale);
  const float b = fadd(fadd(p, other - best), eps);
  const float up = nextafterf(p, kInf);
  return b < up ? up : b;
}

// Whether point row (global) may keep cluster c (local) at the start of a phase: c costs at
// most eps more than its best option at the current prices (eps-complementary slackness).
// Refreshes a stale list first. A cluster outside the point's list counts as a violation
// (conservative: unassigning a point is always allowed). On success *bid is the bid the
// point would make for c now (price + margin over its best other option + eps), so kept
// points are evicted in the order the auction itself would evict them.
RESID_HD inline bool keeps_cs(const BalancedAssignArgs& a, const Segment& sg, int64_t row, int64_t c,
                              float eps, float scale, bool complete, bool any_dropped, float base,
                              float* bid) {
  float w1, w2, last;
  int32_t k1 = best_two(a, sg, row, any_dropped, base, &w1, &w2, &last);
  if (!complete && (k1 < 0 || w1 > last)) {
    refresh_list(a, sg, row, base);
    k1 = best_two(a, sg, row, any_dropped, base, &w1, &w2, &last);
  }
  if (k1 < 0) return false;
  if (!complete && last < w2) w2 = last;
  const int32_t* ci = a.cand_idx + row * a.m;
  const float* cd = a.cand_dist + row * a.m;
  for (int64_t j = 0; j < a.m && ci[j] >= 0; ++j) {
    if (ci[j] != c) continue;
    const float p = a.cur_price[sg.k0 + c];
    const float wc = fadd(cd[j], p);
    if (wc > fadd(w1, eps)) return false;
    *bid = auction_bid(p, wc, k1 == c ? w2 : w1, eps, scale);  // margin over its best other option
    return true;
  }
  return false;
}

// One auction phase at the given eps with a.price as reserve prices. Without `keep` every
// point starts unassigned; with it, a point whose label (local, in a.labels) still satisfies
// eps-CS keeps its cluster, holding the bid it would make now (keeps_cs), and only the
// others bid: after a phase at 8x the eps, or a Lloyd step that moved centroids a little,
// most points keep their cluster, where a restart would have every point bid again.
RESID_HD inline void auction_phase(const BalancedAssignArgs& a, const Segment& sg, float eps,
                                   float scale, bool complete, bool any_dropped, float base,
                                   bool keep) {
  for (int64_t k = 0; k < sg.K; ++k) {
    a.count[sg.k0 + k] = 0;
    a.cur_price[sg.k0 + k] = a.price[sg.k0 + k];
  }
  int32_t* stack = a.stack + sg.n0;
  int64_t top = 0;
  for (int64_t i = sg.n - 1; i >= 0; --i) {
    const int64_t c = keep ? a.labels[sg.n0 + i] : kUnassigned;
    // Kept points are placed in a fixed order (descending index) holding the bid they would
    // make now; a cluster they fill costs its lowest held bid from then on, which keeps
    // eps-CS for the holders (each holder's bid stays within eps of its best other option).
    float bid = 0.f;
    if (c >= 0 && c < sg.K && !is_full(a, sg.k0 + c) &&
        keeps_cs(a, sg, sg.n0 + i, c, eps, scale, complete, any_dropped, base, &bid)) {
      place(a, sg, static_cast<int32_t>(i), static_cast<int32_t>(c), bid);
      continue;
    }
    stack[top++] = static_cast<int32_t>(i);
    a.labels[sg.n0 + i] = kUnassigned;
  }
  // Generous guard: typical phases need a few bids per point.
  int64_t budget = 256 * sg.n + 4096;
  while (top > 0) {
    const int32_t i = stack[--top];
    if (top > 0) prefetch_point(a, sg.n0 + stack[top - 1]);  // the next bidder unless i evicts one
    if (budget-- <= 0) {
      a.labels[sg.n0 + i] = kFallback;
      continue;
    }
    float w1, w2, last;
    const int32_t k1 = best_two(a, sg, sg.n0 + i, any_dropped, base, &w1, &w2, &last);
    if (!complete) {
      // Every cluster outside the list costs at least `last`: when that may be better,
      // refresh the list against the current prices and bid again.
      if (k1 < 0 || w1 > last) {
        refresh_list(a, sg, sg.n0 + i, base);
        stack[top++] = i;
        continue;
      }
      if (last < w2) w2 = last;
    } else if (k1 < 0) {
      a.labels[sg.n0 + i] = kFallback;  // unreachable when sum(capacity) >= n
      continue;
    }
    const int32_t ev = place(a, sg, i, k1, auction_bid(a.cur_price[sg.k0 + k1], w1, w2, eps, scale));
    if (ev >= 0) {
      a.labels[sg.n0 + ev] = kUnassigned;
      stack[top++] = ev;
    }
  }
}

// Prices after a phase: a full bounded cluster's lowest held bid (>= its reserve) becomes
// its next reserve; any other cluster keeps its reserve, so prices never fall below price0.
// A cluster dropped in a clean-up round keeps reserve 0 for good, so the dropped set only
// grows and the rounds cannot cycle (a full dropped cluster still costs its lowest held bid
// during a phase).
RESID_HD inline void settle_prices(const BalancedAssignArgs& a, const Segment& sg) {
  for (int64_t k = 0; k < sg.K; ++k) {
    const int64_t kg = sg.k0 + k;
    if (!a.dropped[kg] && is_bounded(a, kg) && is_full(a, kg)) a.price[kg] = a.heap_bid[a.heap_offsets[kg]];
  }
}

// Subtract the smallest reserve from every reserve. A uniform shift changes no choice, but
// left alone prices drift up across phases and Lloyd iterations, and every point's bound
// (kept in un-shifted units: effective bound = bound - base) would go stale.
RESID_HD inline void normalise_prices(const BalancedAssignArgs& a, const Segment& sg, float* base) {
  float lo = kInf;
  for (int64_t k = 0; k < sg.K; ++k) lo = a.price[sg.k0 + k] < lo ? a.price[sg.k0 + k] : lo;
  if (!(lo > 0.f) || lo >= kInf) return;
  for (int64_t k = 0; k < sg.K; ++k) a.price[sg.k0 + k] -= lo;
  *base = fadd(*base, lo);
}

// Fallback (bid budget exhausted; not expected in practice): such points go, in index
// order, to their exactly nearest cluster with room (ties: lower index).
RESID_HD inline void place_fallback(const BalancedAssignArgs& a, const Segment& sg) {
  for (int64_t i = 0; i < sg.n; ++i) {
    if (a.labels[sg.n0 + i] != kFallback) continue;
    const float* xr = a.x + (sg.n0 + i) * a.d;
    int64_t best = -1;
    float bd = kInf;
    for (int64_t k = 0; k < sg.K; ++k) {
      const int64_t kg = sg.k0 + k;
      if (a.count[kg] >= a.capacity[kg]) continue;
      const float dk = row_sq_dist(xr, a.centroids + kg * a.d, a.d);
      if (best < 0 || dk < bd) {
        bd = dk;
        best = k;
      }
    }
    // best >= 0 because sum(capacity) >= n (validated by the wrapper). Held at the reserve
    // price so the heaps stay consistent for settle_prices.
    place(a, sg, static_cast<int32_t>(i), static_cast<int32_t>(best), a.price[sg.k0 + best]);
  }
}

// The whole per-segment solve.
RESID_HD inline void resolve_segment(const BalancedAssignArgs& a, int64_t s) {
  Segment sg;
  sg.s = s;
  sg.n0 = a.offsets[s];
  sg.n = a.offsets[s + 1] - sg.n0;
  sg.k0 = a.centroid_offsets[s];
  sg.K = a.centroid_offsets[s + 1] - sg.k0;
  if (sg.n == 0) return;
  const bool complete = sg.K <= a.m;
  for (int64_t i = 0; i < sg.n; ++i) {
    const int64_t row = sg.n0 + i;
    a.exact[row] = 0;
    float b = 0.f;  // the largest d + price0 in the list (lists need not be sorted)
    for (int64_t j = 0; j < a.m && a.cand_idx[row * a.m + j] >= 0; ++j) {
      const float v = fadd(a.cand_dist[row * a.m + j], a.price0[sg.k0 + a.cand_idx[row * a.m + j]]);
      b = v > b ? v : b;
    }
    a.bound[row] = b;
  }
  for (int64_t k = 0; k < sg.K; ++k) a.dropped[sg.k0 + k] = 0;
  // Scale of the costs: mean nearest-candidate distance (sequential sum, same on both twins).
  // and of the price range a cold start must cover: mean spread of the candidate distances.
  float scale = 0.f, spread = 0.f;
  for (int64_t i = 0; i < sg.n; ++i) {
    const int64_t row = sg.n0 + i;
    float nearest = a.cand_dist[row * a.m], farthest = nearest;
    for (int64_t j = 1; j < a.m && a.cand_idx[row * a.m + j] >= 0; ++j) {
      const float v = a.cand_dist[row * a.m + j];
      if (v < nearest) nearest = v;
      if (v > farthest) farthest = v;
    }
    scale = fadd(scale, nearest);
    spread = fadd(spread, farthest - nearest);
  }
  scale = scale / static_cast<float>(sg.n);
  spread = spread / static_cast<float>(sg.n);
  if (!(scale > 1e-30f)) scale = 1e-30f;  // all points on their centroids: any eps works
  const float eps_final = scale / a.eps_div;
  // Cold start (price0 = 0 or a sampled estimate): begin with eps near the price range, or
  // the auction fights long "price wars" of eps-sized steps. Warm start (a.labels holds the
  // previous solve's labels, price0 its prices): every phase keeps the points that still
  // satisfy eps-CS. Every later phase also keeps the previous phase's eps-CS points.
  bool keep = false;
  float eps = scale / 8.f;
  if (a.warm) {
    for (int64_t i = 0; i < sg.n; ++i) {
      const int64_t c = a.labels[sg.n0 + i] - sg.k0;
      a.labels[sg.n0 + i] = (c >= 0 && c < sg.K) ? c : kUnassigned;
    }
    keep = true;
    // Few violators: the prices are nearly right, refine from scale/8. Many (an early Lloyd
    // step moved centroids far): small eps steps would fight a long price war (measured on
    // 100k x 128, K=256: 1.7M bids at 25% kept), so start wide like a cold solve.
    int64_t kept = 0;
    for (int64_t k = 0; k < sg.K; ++k) a.cur_price[sg.k0 + k] = a.price[sg.k0 + k];
    for (int64_t i = 0; i < sg.n; ++i) {
      float bid;
      const int64_t c = a.labels[sg.n0 + i];
      kept += c >= 0 && keeps_cs(a, sg, sg.n0 + i, c, eps, scale, complete, false, 0.f, &bid);
    }
    if (kept < sg.n - sg.n / kWarmViolatorsDiv && spread / 4.f > eps) eps = spread / 4.f;
  } else if (spread / 4.f > eps) {
    eps = spread / 4.f;
  }
  float base = 0.f;
  for (bool last_phase = false; !last_phase; eps = eps / 8.f) {
    if (eps <= eps_final * 4.f) {  // the final phase runs at exactly eps_final
      eps = eps_final;
      last_phase = true;
    }
    auction_phase(a, sg, eps, scale, complete, false, base, keep);
    settle_prices(a, sg);
    normalise_prices(a, sg, &base);
    keep = true;
  }
  // Clean-up rounds (see the header). Each round drops at least one more reserve for good
  // and reruns the final phase keeping every point that still satisfies eps-CS (cheap), so
  // at most K rounds reach the state where every cluster with room costs 0 (eps-optimal).
  bool any_dropped = false;
  for (int64_t round = 0; round <= sg.K; ++round) {
    bool dropped = false;
    for (int64_t k = 0; k < sg.K; ++k) {
      const int64_t kg = sg.k0 + k;
      if (a.price[kg] > 0.f && !is_full(a, kg)) {
        a.price[kg] = 0.f;
        a.dropped[kg] = 1;
        dropped = true;
      }
    }
    if (!dropped) break;
    any_dropped = true;
    auction_phase(a, sg, eps_final, scale, complete, any_dropped, base, true);
    settle_prices(a, sg);
  }
  place_fallback(a, sg);
  settle_prices(a, sg);
  for (int64_t i = 0; i < sg.n; ++i) a.labels[sg.n0 + i] += sg.k0;
}

}  // namespace balanced_detail
}  // namespace resid
