"""resid_ext.Trie: CSR structure against the SID table, invariants, items(), bad input."""
import pytest
import torch

import resid_ext
from resid_ext import _C, Trie
from reference_beam import random_sids, trie_paths


def _check_structure(trie: Trie, sids: torch.Tensor) -> None:
    n, depth = sids.shape
    rows = [tuple(r) for r in sids.tolist()]
    paths = trie_paths(trie)
    # Exactly one node per distinct prefix, and every node is some prefix.
    prefixes = {r[:k] for r in rows for k in range(depth + 1)}
    assert sorted(paths.values()) == sorted(prefixes)
    assert trie.num_nodes == len(prefixes) == len(paths)
    # Breadth-first numbering: depth ranges from level_offsets, children code-sorted.
    for node, path in paths.items():
        lo, hi = trie.level_offsets[len(path)], trie.level_offsets[len(path) + 1]
        assert lo <= node < hi
        assert trie.node_depth(node) == len(path)
    off, tok = trie.child_offsets.tolist(), trie.child_tokens.tolist()
    for node in paths:
        codes = tok[off[node]:off[node + 1]]
        assert codes == sorted(set(codes))
    # Leaves map back to their rows; inner nodes to -1.
    leaf = trie.leaf_items.tolist()
    for node, path in paths.items():
        assert leaf[node] == (rows.index(path) if len(path) == depth else -1)
    assert trie.num_items == n and trie.depth == depth
    assert trie.level_sizes == tuple(int(x) + 1 for x in sids.max(dim=0).values)


@pytest.mark.parametrize("n,levels,seed", [(1, [3], 0), (4, [4], 1), (20, [3, 4, 5], 2), (200, [8, 8, 8], 3),
                                           (60, [2, 2, 2, 2, 2, 2], 4), (64, [4, 4, 4], 5)])
def test_structure_matches_sid_table(n, levels, seed):
    sids = random_sids(n, levels, seed)
    _check_structure(Trie(sids), sids)


def test_hand_built_example():
    sids = torch.tensor([[0, 1, 2], [0, 1, 0], [1, 0, 0], [0, 2, 1]])
    t = Trie(sids)
    assert t.child_offsets.tolist() == [0, 2, 4, 5, 7, 8, 9, 9, 9, 9, 9]
    assert t.child_tokens.tolist() == [0, 1, 1, 2, 0, 0, 2, 1, 0]
    assert t.child_nodes.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert t.leaf_items.tolist() == [-1, -1, -1, -1, -1, -1, 1, 0, 3, 2]
    assert t.level_offsets == [0, 1, 3, 6, 10]
    assert t.level_sizes == (2, 3, 3)


def test_int32_and_noncontiguous_sids():
    sids = random_sids(30, [4, 5, 6], 7)
    ref = Trie(sids)
    for variant in (sids.to(torch.int32), sids.t().contiguous().t()):
        t = Trie(variant)
        assert torch.equal(t.child_offsets, ref.child_offsets) and torch.equal(t.leaf_items, ref.leaf_items)
    strided = torch.zeros(30, 6, dtype=torch.int64)
    strided[:, ::2] = sids
    t = Trie(strided[:, ::2])
    assert torch.equal(t.child_tokens, ref.child_tokens)


def test_items_maps_leaves_and_padding():
    sids = torch.tensor([[0, 1], [1, 0], [1, 1]])
    t = Trie(sids)
    leaves = torch.arange(t.level_offsets[2], t.level_offsets[3])
    items = t.items(leaves)
    assert sorted(items.tolist()) == [0, 1, 2]
    paths = trie_paths(t)
    for node, item in zip(leaves.tolist(), items.tolist()):
        assert tuple(sids[item].tolist()) == paths[node]
    q = torch.tensor([[0, -1], [leaves[0], 1]])
    out = t.items(q)
    assert out.shape == q.shape and out[0].tolist() == [-1, -1] and out[1, 1] == -1
    assert t.items(torch.empty(0, 3, dtype=torch.int64)).shape == (0, 3)


def test_to_same_device_is_identity_and_repr():
    t = Trie(torch.tensor([[0], [1]]))
    assert t.to("cpu") is t and t.device == torch.device("cpu")
    assert "num_items=2" in repr(t)


def test_duplicate_rows_named():
    sids = torch.tensor([[0, 1], [1, 1], [2, 0], [1, 1]])
    with pytest.raises(ValueError, match=r"Trie: sids rows 1 and 3 are identical \(\[1, 1\]\)"):
        Trie(sids)


@pytest.mark.parametrize("bad,exc,msg", [
    ([[0, 1], [2, 3]], TypeError, "sids must be a torch.Tensor"),
    (torch.tensor([[0.0, 1.0]]), ValueError, "sids must have dtype int64, int32, got float32"),
    (torch.tensor([0, 1]), ValueError, r"sids must be 2-D \[N, L\], got shape \[2\]"),
    (torch.empty(0, 3, dtype=torch.int64), ValueError, "sids must have at least one row and one column"),
    (torch.empty(2, 0, dtype=torch.int64), ValueError, "sids must have at least one row and one column"),
    (torch.tensor([[0, 1], [2, -4]]), ValueError, r"sids must hold codes >= 0, got -4 at index \[1, 1\]"),
])
def test_bad_sids(bad, exc, msg):
    with pytest.raises(exc, match="Trie: " + msg):
        Trie(bad)


def test_items_bad_arguments():
    t = Trie(torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match=r"Trie.items: nodes must be in \[-1, 3\), got 3"):
        t.items(torch.tensor([3]))
    with pytest.raises(ValueError, match=r"Trie.items: nodes must be in \[-1, 3\), got -2"):
        t.items(torch.tensor([-2]))
    with pytest.raises(ValueError, match="Trie.items: nodes must have dtype int64"):
        t.items(torch.tensor([1], dtype=torch.int32))
    with pytest.raises(TypeError, match="Trie.items: nodes must be a torch.Tensor"):
        t.items([1])


def _csr_check(t: Trie, **override: torch.Tensor) -> None:
    arrs = {"child_offsets": t.child_offsets.clone(), "child_tokens": t.child_tokens.clone(),
            "child_nodes": t.child_nodes.clone(), "leaf_items": t.leaf_items.clone(),
            "level_offsets": torch.tensor(t.level_offsets)}
    arrs.update(override)
    _C.trie_check_csr(*(arrs[k].data_ptr() for k in ("child_offsets", "child_tokens", "child_nodes",
                                                     "leaf_items", "level_offsets")),
                      t.num_nodes, t.num_items, t.depth)


def test_csr_validator_catches_corruption():
    t = Trie(torch.tensor([[0, 1], [0, 2], [1, 0]]))
    _csr_check(t)  # the real trie passes
    tok = t.child_tokens.clone()
    tok[2], tok[3] = tok[3].item(), tok[2].item()
    with pytest.raises(ValueError, match="not strictly ascending"):
        _csr_check(t, child_tokens=tok)
    nodes = t.child_nodes.clone()
    nodes[3] = nodes[2]
    with pytest.raises(ValueError, match="parents"):
        _csr_check(t, child_nodes=nodes)
    leaf = t.leaf_items.clone()
    leaf[-1] = leaf[-2]
    with pytest.raises(ValueError, match="not a new row"):
        _csr_check(t, leaf_items=leaf)
    leaf = t.leaf_items.clone()
    leaf[1] = 0
    with pytest.raises(ValueError, match="inner node 1 maps to item 0"):
        _csr_check(t, leaf_items=leaf)


@pytest.mark.skipif(resid_ext.build_info()["cuda_devices"] > 0, reason="checks the GPU-less error")
def test_cuda_without_gpu_is_clear_error():
    t = Trie(torch.tensor([[0], [1]]))
    with pytest.raises(RuntimeError, match="Trie.to: got tensors on cuda"):
        t.to("cuda")
