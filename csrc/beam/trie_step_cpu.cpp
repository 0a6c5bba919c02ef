// Fused trie-constrained beam step, CPU twin (the spec the CUDA twin must match bit for bit).
//
// Contract (validated in resid_ext/beam.py): log_probs [B, W, V] float32, scores [B, W] float32
// (-inf = dead beam), nodes [B, W] int64. For each row, among all candidates (live beam w, child
// edge e of its node) with total = scores[w] + log_probs[w, code(e)] > -inf, keep the W best by
// total descending, ties by (parent slot, code) ascending; write them sorted. Slots past the
// number of candidates are padding: score -inf, node/parent/code -1.
//
// Algorithm: one pass over the row's candidates in flat (slot, edge) order, appending their unique
// 64-bit ranks (trie_step_common.h) to a buffer of 4W; when it fills, nth_element keeps the best W
// and their worst becomes a threshold that rejects most later candidates with one integer compare
// (faiss-style reservoir; cheaper than a heap when few candidates are rejected, e.g. at the root).
// Then the kept W are sorted. O(C + W log W) per row for C candidates. Rows run in parallel
// (OpenMP) only when the step has enough candidates to pay for a barrier: on a loaded machine a
// descheduled worker costs a time slice. Scratch per thread: 4W ranks + W+1 offsets + W edge
// starts, reused across calls (thread_local), so a call allocates nothing beyond its outputs.
#include <algorithm>
#include <functional>
#include <vector>

#include "beam/trie_step.h"
#include "beam/trie_step_common.h"

namespace resid {

namespace {

// Below this many candidates in a step the rows run on one thread (about 0.1 ms of work).
constexpr int64_t kParallelCandidates = 1 << 15;

struct RowScratch {
  std::vector<uint64_t> buf;
  std::vector<uint32_t> off;
  std::vector<int64_t> edge_begin;
};

// Offsets of the row's flat candidate numbering; returns the candidate count.
uint32_t row_offsets(const BeamStepArgs& a, int64_t row, RowScratch& s) {
  const int64_t W = a.width;
  s.off.resize(W + 1);
  s.edge_begin.resize(W);
  uint32_t total = 0;
  for (int64_t w = 0; w < W; ++w) {
    s.off[w] = total;
    total += static_cast<uint32_t>(beam::slot_children(a, row, w, &s.edge_begin[w]));
  }
  s.off[W] = total;
  return total;
}

void step_row(const BeamStepArgs& a, int64_t row, RowScratch& s) {
  const int64_t W = a.width;
  row_offsets(a, row, s);
  const int64_t cap = 4 * W;
  s.buf.resize(cap);
  uint64_t* buf = s.buf.data();
  const std::greater<uint64_t> better;  // ranks: larger is better
  int64_t n = 0;
  uint64_t threshold = 0;  // every rank kept from now on must beat the W-th best seen so far
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
      if (rank <= threshold) continue;  // also drops rank 0 (not a continuation)
      buf[n++] = rank;
      if (n == cap) {
        std::nth_element(buf, buf + (W - 1), buf + n, better);
        threshold = buf[W - 1];
        n = W;
      }
    }
  }
  if (n > W) {
    std::nth_element(buf, buf + (W - 1), buf + n, better);
    n = W;
  }
  std::sort(buf, buf + n, better);  // best first
  for (int64_t r = 0; r < n; ++r) beam::write_selected(a, row, r, buf[r], s.off.data(), s.edge_begin.data());
  for (int64_t r = n; r < W; ++r) beam::write_padding(a, row, r);
}

}  // namespace

void trie_beam_step_cpu(const BeamStepArgs& a) {
#ifdef RESID_WITH_OPENMP
  // Candidate count of the whole step: O(B W) reads of child_offsets, decides threading.
  int64_t candidates = 0;
  for (int64_t i = 0; i < a.batch * a.width && candidates < kParallelCandidates; ++i) {
    int64_t begin;
    candidates += beam::slot_children(a, i / a.width, i % a.width, &begin);
  }
#pragma omp parallel if (a.batch > 1 && candidates >= kParallelCandidates)
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
