// Per-element logic of the trie beam step, shared by trie_step_cpu.cpp and trie_step_cuda.cu
// so both twins enumerate, rank and decode candidates identically (bit-exact parity).
//
// A candidate is (beam slot w, child edge e of beam w's node). Candidates of a row are numbered
// by a flat index in (slot, edge) order: flat = off[w] + (e - child_offsets[node_w]), where off
// is the exclusive prefix sum of the live beams' child counts. Because codes ascend inside a
// node, flat order is exactly the tie order "(parent slot, code) ascending".
//
// Each candidate gets one 64-bit rank: high 32 bits = an order-preserving key of its float
// score, low 32 bits = ~flat. Larger rank = better candidate; ranks are unique within a row, so
// "top-W by rank" is the whole selection rule (score descending, ties by (slot, code)). Rank 0
// means "not a candidate": its score is -inf or NaN (such a beam would be dead).
#pragma once

#include <cmath>
#include <cstdint>

#include "beam/trie_step.h"
#include "common/hd.h"

namespace resid {
namespace beam {

// Order-preserving map float -> uint32 (a < b  <=>  key(a) < key(b), for non-NaN floats).
// Never 0 for a non-NaN float (0 would need the bits of a negative NaN).
RESID_HD inline uint32_t score_key(float s) {
  union {
    float f;
    uint32_t u;
  } v;
  v.f = s;
  return (v.u & 0x80000000u) ? ~v.u : (v.u | 0x80000000u);
}

RESID_HD inline float key_score(uint32_t k) {
  union {
    float f;
    uint32_t u;
  } v;
  v.u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  return v.f;
}

// A beam expands only with a finite-or-+inf score and a node inside the trie. The node range
// check keeps the kernels memory-safe even when the caller skipped value validation.
RESID_HD inline bool beam_live(float score, int64_t node, int64_t num_nodes) {
  return score > -INFINITY && node >= 0 && node < num_nodes;
}

// Child edges of beam (row, w): sets *begin and returns their count (0 for a dead beam).
RESID_HD inline int64_t slot_children(const BeamStepArgs& a, int64_t row, int64_t w, int64_t* begin) {
  const int64_t i = row * a.width + w;
  const int64_t node = a.nodes[i];
  if (!beam_live(a.scores[i], node, a.trie.num_nodes)) {
    *begin = 0;
    return 0;
  }
  *begin = a.trie.child_offsets[node];
  return a.trie.child_offsets[node + 1] - *begin;
}

// Rank of one candidate, or 0 when it is not a valid continuation (score -inf or NaN).
// total is computed as one float32 add in both twins (no FMA can form), so scores match bitwise.
RESID_HD inline uint64_t candidate_rank(float beam_score, float log_prob, uint32_t flat) {
  const float total = beam_score + log_prob;
  if (!(total > -INFINITY)) return 0;  // -inf or NaN
  return (static_cast<uint64_t>(score_key(total)) << 32) | static_cast<uint64_t>(~flat);
}

RESID_HD inline float rank_score(uint64_t rank) { return key_score(static_cast<uint32_t>(rank >> 32)); }
RESID_HD inline uint32_t rank_flat(uint64_t rank) { return ~static_cast<uint32_t>(rank); }

// Slot owning flat index `flat`: the largest w with off[w] <= flat (off[0..W] ascending, off[W] > flat).
// Slots without children have off[w] == off[w + 1] and are skipped by taking the largest such w.
RESID_HD inline int64_t flat_slot(const uint32_t* off, int64_t width, uint32_t flat) {
  int64_t lo = 0, hi = width;  // invariant: off[lo] <= flat < off[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (off[mid] <= flat) lo = mid; else hi = mid;
  }
  return lo;
}

// Writes output slot r of a row: a selected candidate, decoded from its rank.
RESID_HD inline void write_selected(const BeamStepArgs& a, int64_t row, int64_t r, uint64_t rank,
                                    const uint32_t* off, const int64_t* edge_begin) {
  const uint32_t flat = rank_flat(rank);
  const int64_t w = flat_slot(off, a.width, flat);
  const int64_t e = edge_begin[w] + static_cast<int64_t>(flat - off[w]);
  const int64_t o = row * a.width + r;
  a.out_scores[o] = rank_score(rank);
  a.out_nodes[o] = a.trie.child_nodes[e];
  a.out_parents[o] = w;
  a.out_codes[o] = a.trie.child_tokens[e];
}

// Padded output slot: a dead beam. -inf score (never expands again), -1 everywhere else so a
// caller that forgets to mask it cannot read it as a real node, parent or code.
RESID_HD inline void write_padding(const BeamStepArgs& a, int64_t row, int64_t r) {
  const int64_t o = row * a.width + r;
  a.out_scores[o] = -INFINITY;
  a.out_nodes[o] = -1;
  a.out_parents[o] = -1;
  a.out_codes[o] = -1;
}

}  // namespace beam
}  // namespace resid
