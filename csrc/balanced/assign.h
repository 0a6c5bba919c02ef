// Balanced assignment: the plain struct both twins take (no torch, no CUDA headers).
//
// One call resolves S independent problems ("segments"). Segment s owns points
// [offsets[s], offsets[s+1]) and clusters [centroid_offsets[s], centroid_offsets[s+1]).
// The wrapper (resid_ext/balanced.py) has already computed, tile by tile, each point's m
// cheapest clusters of its segment by d + price0 (cand_idx local to the segment, -1 padding
// at the end, any order) and allocated every workspace below; the kernels trust these inputs.
#pragma once

#include <cstdint>

namespace resid {

struct BalancedAssignArgs {
  int64_t num_segments = 0;           // S
  int64_t d = 0;                      // feature dim (fallback distances)
  int64_t m = 0;                      // candidates per point
  int64_t warm = 0;                   // 1: price0 are a previous solve's prices and labels holds
                                      //    its labels on entry (kept where still eps-optimal)
  float eps_div = 512.f;              // final eps = scale / eps_div (scale: mean nearest
                                      //    candidate distance); cost <= optimum + N * eps
  const int64_t* offsets = nullptr;           // [S+1] point offsets
  const int64_t* centroid_offsets = nullptr;  // [S+1] cluster offsets
  int32_t* cand_idx = nullptr;                // [N, m] local cluster ids, -1 = padding
  float* cand_dist = nullptr;                 // [N, m] squared distances of those clusters
                                              //     (both rewritten in place when a point's
                                              //     list is refreshed)
  const float* price0 = nullptr;              // [K] prices the lists were ranked by (each row
                                              //     holds the m smallest cand_dist + price0)
  const int64_t* capacity = nullptr;          // [K] max points per cluster
  const float* x = nullptr;                   // [N, d] float32 (exact fallback distances)
  const float* centroids = nullptr;           // [K, d] float32
  const int64_t* heap_offsets = nullptr;      // [K+1] heap slots; cluster k bounded iff it has cap_k slots
  // workspaces (contents on entry do not matter except price, the warm-start reserve prices)
  float* heap_bid = nullptr;   // [H] held bids, a min-heap per bounded cluster
  int32_t* heap_pt = nullptr;  // [H] the point (local index) holding each bid
  int64_t* count = nullptr;    // [K] points held per cluster
  float* price = nullptr;      // [K] in: a copy of price0 (reserve prices); out: final prices
  float* cur_price = nullptr;  // [K] current price of each cluster during a phase
  uint8_t* dropped = nullptr;  // [K] 1 = reserve dropped to 0 in a clean-up round
  int32_t* stack = nullptr;    // [N] unassigned points of each segment
  uint8_t* exact = nullptr;    // [N] out: 1 = the point's list was refreshed (statistics)
  float* bound = nullptr;      // [N] cost floor of every cluster outside the point's list
  float* sel_val = nullptr;    // [K] selection scratch of list refreshes (a segment uses its
  int32_t* sel_idx = nullptr;  // [K]   clusters' slots)
  // Distances of some points to all their segment's clusters (the wrapper's GEMM writes
  // them in place, list refreshes read them): segment s owns floats [cache_offsets[s],
  // cache_offsets[s+1]) of dist_cache as rows of K_s floats, each entry the ranking value
  // ||c||^2 + price0 - 2 x.c, i.e. squared distance - ||x||^2 + price0.
  const int64_t* cache_offsets = nullptr;  // [S+1]
  const float* dist_cache = nullptr;       // [cache_offsets[S]]
  const int32_t* cache_slot = nullptr;     // [N] cache row of each point (segment-local), -1 = none
  const float* row_norm = nullptr;         // [N] ||x||^2 of each point (read for cached points)
  int64_t* labels = nullptr;   // [N] out: global cluster index (segment offset added);
                               //     in (warm only): the previous solve's labels
};

// CPU twin: OpenMP across segments on `threads` threads (0: the OpenMP default). The spec.
void balanced_assign_cpu(const BalancedAssignArgs& a, int threads);

#ifdef RESID_WITH_CUDA
// CUDA twin: same per-segment routine, one thread per segment, on `stream` (a cudaStream_t).
void balanced_assign_cuda(const BalancedAssignArgs& a, void* stream);
#endif

}  // namespace resid
