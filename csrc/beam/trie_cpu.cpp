// Trie construction (host only: built once per SID table, then copied to the device).
//
// Algorithm: sort the rows lexicographically (ties by row index, so duplicates are adjacent
// and reported as (lower row, higher row)); a node of depth d+1 starts at every sorted position
// whose first d+1 codes differ from the previous row's. Numbering nodes breadth-first (depth by
// depth, in sorted order) makes every node's children contiguous and code-sorted, and gives
// each non-root node c exactly the edge c - 1: child_nodes[e] = e + 1, child_offsets is the
// first child's id - 1. Time O(N L log N), memory O(N L).
#include <algorithm>
#include <numeric>
#include <string>

#include "beam/trie_step.h"
#include "common/check.h"

namespace resid {

namespace {

std::string row_text(const int64_t* sids, int64_t row, int64_t l) {
  std::string s = "[";
  for (int64_t j = 0; j < l; ++j) s += (j ? ", " : "") + std::to_string(sids[row * l + j]);
  return s + "]";
}

}  // namespace

TrieCSR trie_build_cpu(const int64_t* sids, int64_t n, int64_t l) {
  RESID_CHECK(n >= 1 && l >= 1, "Trie: sids must be [N, L] with N >= 1 and L >= 1, got [" << n << ", " << l << "]");
  RESID_CHECK(n * l + 1 < (int64_t{1} << 31),
              "Trie: sids has " << n * l << " codes; at most 2^31 - 2 trie nodes are supported");
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const int64_t* ra = sids + a * l;
    const int64_t* rb = sids + b * l;
    for (int64_t j = 0; j < l; ++j)
      if (ra[j] != rb[j]) return ra[j] < rb[j];
    return a < b;
  });

  // common[i] = length of the common prefix of sorted rows i-1 and i (0 for i = 0).
  std::vector<int64_t> common(n, 0);
  for (int64_t i = 1; i < n; ++i) {
    const int64_t* ra = sids + order[i - 1] * l;
    const int64_t* rb = sids + order[i] * l;
    int64_t c = 0;
    while (c < l && ra[c] == rb[c]) ++c;
    RESID_CHECK(c < l, "Trie: sids rows " << order[i - 1] << " and " << order[i] << " are identical ("
                                          << row_text(sids, order[i], l)
                                          << "); every item needs a unique semantic ID");
    common[i] = c;
  }

  TrieCSR t;
  t.level_sizes.assign(l, 0);
  for (int64_t i = 0; i < n * l; ++i) t.level_sizes[i % l] = std::max(t.level_sizes[i % l], sids[i] + 1);

  // Nodes per depth: row i opens a new node at depth d+1 (d in [common[i], l)).
  std::vector<int64_t> per_depth(l + 1, 0);
  per_depth[0] = 1;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = common[i]; d < l; ++d) ++per_depth[d + 1];
  t.level_offsets.assign(l + 2, 0);
  for (int64_t d = 0; d <= l; ++d) t.level_offsets[d + 1] = t.level_offsets[d] + per_depth[d];
  const int64_t num_nodes = t.level_offsets[l + 1];
  const int64_t num_edges = num_nodes - 1;

  t.child_tokens.assign(num_edges, 0);
  t.child_nodes.resize(num_edges);
  std::iota(t.child_nodes.begin(), t.child_nodes.end(), int64_t{1});
  t.leaf_items.assign(num_nodes, -1);
  std::vector<int64_t> first_child(num_nodes, -1);  // first child's id, -1 for none
  std::vector<int64_t> next_id(t.level_offsets.begin(), t.level_offsets.end() - 1);
  std::vector<int64_t> path(l + 1, 0);  // path[d] = node of depth d on the current row's path
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = sids + order[i] * l;
    for (int64_t d = common[i]; d < l; ++d) {
      const int64_t c = next_id[d + 1]++;
      if (first_child[path[d]] < 0) first_child[path[d]] = c;
      t.child_tokens[c - 1] = r[d];
      path[d + 1] = c;
    }
    t.leaf_items[path[l]] = order[i];
  }
  // Breadth-first numbering: node n's children are [first_child[n], first_child of the next
  // node with children), i.e. edges [child_offsets[n], child_offsets[n+1]).
  t.child_offsets.assign(num_nodes + 1, num_edges);
  for (int64_t v = num_nodes - 1; v >= 0; --v)
    t.child_offsets[v] = first_child[v] >= 0 ? first_child[v] - 1 : t.child_offsets[v + 1];
  return t;
}

void trie_check_csr(const int64_t* child_offsets, const int64_t* child_tokens,
                    const int64_t* child_nodes, const int64_t* leaf_items,
                    const int64_t* level_offsets, int64_t num_nodes, int64_t num_items,
                    int64_t depth) {
  const int64_t num_edges = child_offsets[num_nodes];
  RESID_CHECK(child_offsets[0] == 0, "Trie: child_offsets[0] must be 0, got " << child_offsets[0]);
  RESID_CHECK(num_edges == num_nodes - 1,
              "Trie: a tree of " << num_nodes << " nodes has " << num_nodes - 1 << " edges, got " << num_edges);
  RESID_CHECK(level_offsets[0] == 0 && level_offsets[1] == 1 && level_offsets[depth + 1] == num_nodes,
              "Trie: level_offsets must start [0, 1, ...] and end at num_nodes=" << num_nodes);
  std::vector<int64_t> parent_count(num_nodes, 0);
  std::vector<char> item_seen(num_items, 0);
  for (int64_t d = 0; d <= depth; ++d) {
    RESID_CHECK(level_offsets[d] < level_offsets[d + 1], "Trie: depth " << d << " has no nodes");
    for (int64_t v = level_offsets[d]; v < level_offsets[d + 1]; ++v) {
      const int64_t b = child_offsets[v], e = child_offsets[v + 1];
      RESID_CHECK(b <= e && e <= num_edges, "Trie: child_offsets not non-decreasing at node " << v);
      RESID_CHECK((d == depth) == (b == e),
                  "Trie: node " << v << " at depth " << d << (d == depth ? " is a leaf but has children"
                                                                          : " has no children"));
      for (int64_t k = b; k < e; ++k) {
        const int64_t c = child_nodes[k];
        RESID_CHECK(c >= level_offsets[d + 1] && c < level_offsets[d + 2],
                    "Trie: edge " << k << " of node " << v << " leads to node " << c << ", not at depth " << d + 1);
        RESID_CHECK(child_tokens[k] >= 0, "Trie: edge " << k << " has negative code " << child_tokens[k]);
        RESID_CHECK(k == b || child_tokens[k - 1] < child_tokens[k],
                    "Trie: codes of node " << v << " are not strictly ascending at edge " << k);
        ++parent_count[c];
      }
      const int64_t item = leaf_items[v];
      if (d == depth) {
        RESID_CHECK(item >= 0 && item < num_items && !item_seen[item],
                    "Trie: leaf " << v << " maps to item " << item << ", not a new row in [0, " << num_items << ")");
        item_seen[item] = 1;
      } else {
        RESID_CHECK(item == -1, "Trie: inner node " << v << " maps to item " << item << " (must be -1)");
      }
    }
  }
  for (int64_t v = 1; v < num_nodes; ++v)
    RESID_CHECK(parent_count[v] == 1, "Trie: node " << v << " has " << parent_count[v] << " parents");
  RESID_CHECK(level_offsets[depth + 1] - level_offsets[depth] == num_items,
              "Trie: " << level_offsets[depth + 1] - level_offsets[depth] << " leaves for " << num_items << " items");
}

}  // namespace resid
