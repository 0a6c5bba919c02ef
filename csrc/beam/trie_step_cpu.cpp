// Fused trie-constrained beam step, CPU twin (the spec the CUDA twin must match bit for bit).
//
// Contract (validated in resid_ext/beam.py): log_probs [B, W, V] float32, scores [B, W] float32
// (-inf = dead beam), nodes [B, W] int64. For each row, among all candidates (live beam w, child
// edge e of its node) with total = scores[w] + log_probs[w, code(e)] > -inf, keep the W best by
// total descending, ties by (parent slot, code) ascending; write them sorted. Slots past the
// number of candidates are padding: score -inf, node/parent/code -1.
//
// Algorithm: one pass over the row's candidates in flat (slot, edge) order with a size-W min-heap
// of 64-bit ranks (trie_step_common.h); most candidates are rejected by one integer compare with
// the heap's worst. O(C log W) per row for C candidates, rows in parallel (OpenMP). Scratch:
// per thread W ranks + W+1 offsets + W edge starts, reused across calls (thread_local).
#include <algorithm>
#include <functional>
#include <vector>

#include "beam/trie_step.h"
#include "beam/trie_step_common.h"

namespace resid {

namespace {

struct RowScratch {
  std::vector<uint64_t> heap;
  std::vector<uint32_t> off;
  std::vector<int64_t> edge_begin;
};

void step_row(const BeamStepArgs& a, int64_t row, RowScratch& s) {
  const int64_t W = a.width;
  s.heap.clear();
  s.off.resize(W + 1);
  s.edge_begin.resize(W);
  uint32_t total = 0;
  for (int64_t w = 0; w < W; ++w) {
    s.off[w] = total;
    total += static_cast<uint32_t>(beam::slot_children(a, row, w, &s.edge_begin[w]));
  }
  s.off[W] = total;

  const std::greater<uint64_t> worse_first;  // min-heap: heap[0] is the worst kept rank
  const float* scores = a.scores + row * W;
  for (int64_t w = 0; w < W; ++w) {
    const uint32_t deg = s.off[w + 1] - s.off[w];
    if (deg == 0) continue;
    const float* lp = a.log_probs + (row * W + w) * a.vocab;
    const int64_t* codes = a.trie.child_tokens + s.edge_begin[w];
    for (uint32_t j = 0; j < deg; ++j) {
      const int64_t code = codes[j];
      if (code >= a.vocab) continue;  // only reachable when the caller skipped value checks
      const uint64_t rank = beam::candidate_rank(scores[w], lp[code], s.off[w] + j);
      if (rank == 0) continue;
      if (static_cast<int64_t>(s.heap.size()) < W) {
        s.heap.push_back(rank);
        std::push_heap(s.heap.begin(), s.heap.end(), worse_first);
      } else if (rank > s.heap.front()) {
        std::pop_heap(s.heap.begin(), s.heap.end(), worse_first);
        s.heap.back() = rank;
        std::push_heap(s.heap.begin(), s.heap.end(), worse_first);
      }
    }
  }
  std::sort(s.heap.begin(), s.heap.end(), worse_first);  // best first
  const int64_t kept = static_cast<int64_t>(s.heap.size());
  for (int64_t r = 0; r < kept; ++r) beam::write_selected(a, row, r, s.heap[r], s.off.data(), s.edge_begin.data());
  for (int64_t r = kept; r < W; ++r) beam::write_padding(a, row, r);
}

}  // namespace

void trie_beam_step_cpu(const BeamStepArgs& a) {
#ifdef RESID_WITH_OPENMP
#pragma omp parallel if (a.batch > 1)
#endif
  {
    thread_local RowScratch scratch;
#ifdef RESID_WITH_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t row = 0; row < a.batch; ++row) step_row(a, row, scratch);
  }
}

}  // namespace resid
