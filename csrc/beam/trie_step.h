// Trie of semantic IDs (CSR) and the fused trie-constrained beam step: the plain structs both
// twins take, and their entry points. Nothing here knows torch or CUDA; resid_ext/beam.py
// validates every argument and passes data pointers.
//
// CSR layout (node 0 = root, nodes numbered breadth-first, children sorted by code):
//   child_offsets[num_nodes + 1]  node n's edges are [child_offsets[n], child_offsets[n + 1])
//   child_tokens[E]               the code of each edge (ascending inside a node)
//   child_nodes[E]                the node each edge leads to
//   leaf_items[num_nodes]         item row at depth-L nodes, -1 elsewhere
//   level_offsets[L + 2]          nodes of depth d are [level_offsets[d], level_offsets[d + 1])
#pragma once

#include <cstdint>
#include <vector>

namespace resid {

// A built trie, owned by the host (moved into numpy arrays by the binding).
struct TrieCSR {
  std::vector<int64_t> child_offsets;
  std::vector<int64_t> child_tokens;
  std::vector<int64_t> child_nodes;
  std::vector<int64_t> leaf_items;
  std::vector<int64_t> level_offsets;
  std::vector<int64_t> level_sizes;  // [L]: max code at that level + 1
};

// Read-only view of a trie's CSR arrays on one device.
struct TrieView {
  const int64_t* child_offsets;  // [num_nodes + 1]
  const int64_t* child_tokens;   // [E]
  const int64_t* child_nodes;    // [E]
  int64_t num_nodes;
};

// One beam step over B rows of W beams; V = codes of the level being taken.
struct BeamStepArgs {
  const float* log_probs;  // [B, W, V]
  const float* scores;     // [B, W]; -inf = dead beam
  const int64_t* nodes;    // [B, W]; any value for dead beams
  TrieView trie;
  int64_t batch;  // B
  int64_t width;  // W
  int64_t vocab;  // V
  float* out_scores;     // [B, W]; -inf in padded slots
  int64_t* out_nodes;    // [B, W]; -1 in padded slots
  int64_t* out_parents;  // [B, W]; -1 in padded slots
  int64_t* out_codes;    // [B, W]; -1 in padded slots
};

// Builds the trie of sids [n, l] (row-major int64 codes >= 0, checked by the caller).
// Throws std::invalid_argument naming both rows when two rows are identical.
TrieCSR trie_build_cpu(const int64_t* sids, int64_t n, int64_t l);

// Checks every CSR invariant listed above (offsets, sorted unique codes, each non-root node
// reached by exactly one edge from the previous depth, leaves <-> items a bijection).
// Throws std::invalid_argument naming the first broken invariant.
void trie_check_csr(const int64_t* child_offsets, const int64_t* child_tokens,
                    const int64_t* child_nodes, const int64_t* leaf_items,
                    const int64_t* level_offsets, int64_t num_nodes, int64_t num_items,
                    int64_t depth);

void trie_beam_step_cpu(const BeamStepArgs& a);

#ifdef RESID_WITH_CUDA
// stream: a cudaStream_t (torch's current stream), passed as void* so this header stays CUDA-free.
void trie_beam_step_cuda(const BeamStepArgs& a, void* stream);
#endif

}  // namespace resid
