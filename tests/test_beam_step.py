"""resid_ext.trie_beam_step (CPU twin): invariants, exact parity with the Python reference,
whole searches against plain beam search / exhaustive scoring / greedy, edge cases, bad input."""
import pytest
import torch

from resid_ext import BeamStep, Trie, beam_start, trie_beam_step
from reference_beam import (RandomModel, beam_search_ref, exhaustive_ref, greedy_ref, random_beam_state,
                            random_sids, trie_beam_step_ref)

NEG_INF = float("-inf")


def _check_invariants(out: BeamStep, scores, nodes, trie: Trie) -> None:
    off, tok, child = trie.child_offsets.tolist(), trie.child_tokens.tolist(), trie.child_nodes.tolist()
    B, W = scores.shape
    for b in range(B):
        row = out.scores[b]
        live = row > NEG_INF
        k = int(live.sum())
        assert bool(live[:k].all()), "padding must be at the end"
        assert torch.all(row[:k][1:] <= row[:k][:-1]), "scores must be sorted descending"
        assert out.nodes[b, k:].eq(-1).all() and out.parents[b, k:].eq(-1).all() and out.codes[b, k:].eq(-1).all()
        seen = set()
        for r in range(k):
            p, c, n = int(out.parents[b, r]), int(out.codes[b, r]), int(out.nodes[b, r])
            assert scores[b, p] > NEG_INF, "a dead beam expanded"
            parent = int(nodes[b, p])
            edges = range(off[parent], off[parent + 1])
            assert c in [tok[e] for e in edges], "code is not a child of the parent's node"
            assert n == child[[e for e in edges if tok[e] == c][0]]
            assert (p, c) not in seen
            seen.add((p, c))


def _assert_same(out: BeamStep, ref) -> None:
    rs, rn, rp, rc = ref
    assert torch.equal(out.nodes, rn) and torch.equal(out.parents, rp) and torch.equal(out.codes, rc)
    torch.testing.assert_close(out.scores, rs, rtol=0, atol=0)  # one float32 add in both: bit-exact


@pytest.mark.parametrize("levels,n,B,W,depth,ties,seed", [
    ([4, 5, 6], 60, 3, 4, 1, False, 0),
    ([4, 5, 6], 60, 3, 4, 2, True, 1),
    ([8, 8], 40, 4, 16, 1, True, 2),
    ([3, 3, 3], 27, 2, 30, 2, False, 3),   # W larger than the level's nodes
    ([16, 16], 200, 5, 7, 0, False, 4),
    ([16, 16], 200, 5, 7, 1, True, 5),
])
def test_matches_reference(levels, n, B, W, depth, ties, seed):
    trie = Trie(random_sids(n, levels, seed))
    lp, scores, nodes = random_beam_state(trie, B, W, depth, seed, ties=ties)
    out = trie_beam_step(lp, scores, nodes, trie)
    _check_invariants(out, scores, nodes, trie)
    _assert_same(out, trie_beam_step_ref(lp, scores, nodes, trie))


def test_first_step_from_root_and_extra_vocab():
    trie = Trie(random_sids(50, [10, 10], 11))
    scores, nodes = beam_start(3, 5)
    lp = torch.randn(3, 5, trie.level_sizes[0] + 3, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    out = trie_beam_step(lp, scores, nodes, trie)
    assert out.parents.eq(0).all(), "only slot 0 is live at the root"
    _check_invariants(out, scores, nodes, trie)
    _assert_same(out, trie_beam_step_ref(lp, scores, nodes, trie))


def test_beam_width_256():
    trie = Trie(random_sids(3000, [64, 64], 12))
    lp, scores, nodes = random_beam_state(trie, 2, 256, 1, 12, ties=True, dead=0.1)
    out = trie_beam_step(lp, scores, nodes, trie)
    assert out.scores[:, -1].gt(NEG_INF).all()
    _assert_same(out, trie_beam_step_ref(lp, scores, nodes, trie))


def test_fewer_continuations_than_beam_pads():
    sids = torch.tensor([[0, 1], [0, 3], [2, 0]])
    trie = Trie(sids)
    scores, nodes = beam_start(1, 8)
    lp = torch.log_softmax(torch.tensor([[[1.0, 5.0, 1.0]]]).expand(1, 8, 3), -1)
    out = trie_beam_step(lp, scores, nodes, trie)
    # code 1 (the model's favourite) is not a child of the root; codes 0 and 2 tie -> code order
    assert out.codes[0].tolist() == [0, 2, -1, -1, -1, -1, -1, -1]
    assert out.scores[0, 0] == out.scores[0, 1]
    assert out.nodes[0, :2].tolist() == [1, 2] and out.parents[0].tolist() == [0, 0] + [-1] * 6
    assert out.scores[0, 2:].eq(NEG_INF).all()
    lp2 = torch.zeros(1, 8, 4)
    out2 = trie_beam_step(lp2, out.scores, out.nodes, trie)
    # Three items: node 1 has codes 1, 3; node 2 has code 0. Equal log-probs -> ties by (slot, code).
    assert out2.parents[0, :3].tolist() == [0, 0, 1] and out2.codes[0, :3].tolist() == [1, 3, 0]
    assert out2.scores[0, 3:].eq(NEG_INF).all() and out2.nodes[0, 3:].eq(-1).all()
    assert sorted(trie.items(out2.nodes[0, :3]).tolist()) == [0, 1, 2]


def test_all_dead_rows_and_masked_codes():
    trie = Trie(random_sids(20, [5, 5], 13))
    lp = torch.zeros(2, 3, 5)
    scores = torch.full((2, 3), NEG_INF)
    scores[1, 0] = 0.0
    nodes = torch.zeros(2, 3, dtype=torch.int64)
    lp[1, 0, :] = NEG_INF  # the model masked every code: no valid continuation either
    out = trie_beam_step(lp, scores, nodes, trie)
    assert out.scores.eq(NEG_INF).all() and out.nodes.eq(-1).all() and out.codes.eq(-1).all()
    lp[1, 0, 2] = -1.0
    out = trie_beam_step(lp, scores, nodes, trie)
    if 2 in trie.child_tokens[: trie.child_offsets[1]].tolist():
        assert out.codes[1].tolist() == [2, -1, -1]


def test_noncontiguous_inputs():
    trie = Trie(random_sids(60, [4, 5, 6], 14))
    lp, scores, nodes = random_beam_state(trie, 4, 6, 1, 14)
    lp_nc = lp.transpose(0, 1).contiguous().transpose(0, 1)
    wide = torch.zeros(4, 6, 2 * lp.shape[2])
    wide[:, :, ::2] = lp
    assert not lp_nc.is_contiguous() and not wide[:, :, ::2].is_contiguous()
    ref = trie_beam_step_ref(lp, scores, nodes, trie)
    _assert_same(trie_beam_step(lp_nc, scores.t().contiguous().t(), nodes.t().contiguous().t(), trie), ref)
    _assert_same(trie_beam_step(wide[:, :, ::2], scores, nodes, trie), ref)


def test_empty_batch():
    trie = Trie(torch.tensor([[0], [1]]))
    out = trie_beam_step(torch.zeros(0, 3, 2), torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), trie)
    assert out.scores.shape == (0, 3) and out.codes.dtype == torch.int64


def _kernel_search(trie: Trie, model: RandomModel, users: list[int], W: int):
    """Full search driven by trie_beam_step; returns per user [(score, item)] for live beams."""
    B = len(users)
    scores, nodes = beam_start(B, W)
    prefixes = [[()] * W for _ in users]
    for level in range(trie.depth):
        lp = torch.zeros(B, W, trie.level_sizes[level])
        for b, u in enumerate(users):
            for w in range(W):
                if scores[b, w] > NEG_INF:
                    lp[b, w] = model.log_probs(u, prefixes[b][w])
        out = trie_beam_step(lp, scores, nodes, trie)
        prefixes = [[prefixes[b][p] + (c,) if p >= 0 else () for p, c in zip(out.parents[b].tolist(),
                                                                             out.codes[b].tolist())]
                    for b in range(B)]
        scores, nodes = out.scores, out.nodes
    items = trie.items(nodes)
    return [[(float(s), int(i)) for s, i in zip(scores[b], items[b]) if s > NEG_INF] for b in range(B)]


@pytest.mark.parametrize("levels,n,W,ties,seed", [
    ([4, 5, 6], 80, 5, False, 20), ([4, 5, 6], 80, 5, True, 21), ([6, 6, 6], 150, 12, True, 22),
    ([3, 3], 6, 10, False, 23),  # fewer items than the beam
])
def test_search_matches_plain_beam_search(levels, n, W, ties, seed):
    sids = random_sids(n, levels, seed)
    model = RandomModel(levels, seed, ties=ties)
    got = _kernel_search(Trie(sids), model, [0, 1, 2], W)
    for u in range(3):
        ref = beam_search_ref(sids, model, u, W)
        assert [i for _, i in got[u]] == [i for _, i in ref]
        torch.testing.assert_close(torch.tensor([s for s, _ in got[u]]), torch.tensor([s for s, _ in ref]),
                                   rtol=0, atol=1e-5)
        assert len({i for _, i in got[u]}) == len(got[u]), "duplicate items"


def test_beam_one_is_constrained_greedy():
    levels = [7, 7, 7]
    sids = random_sids(120, levels, 30)
    model = RandomModel(levels, 30)
    got = _kernel_search(Trie(sids), model, list(range(4)), 1)
    for u in range(4):
        s, item = greedy_ref(sids, model, u)
        assert got[u][0][1] == item and abs(got[u][0][0] - s) < 1e-5


def test_wide_beam_equals_exhaustive():
    levels = [4, 4, 4]
    sids = random_sids(40, levels, 31)
    model = RandomModel(levels, 31)
    got = _kernel_search(Trie(sids), model, [0, 1], 40)
    for u in range(2):
        ref = exhaustive_ref(sids, model, u)
        assert len(got[u]) == 40
        assert [i for _, i in got[u]] == [i for _, i in ref]
        torch.testing.assert_close(torch.tensor([s for s, _ in got[u]]), torch.tensor([s for s, _ in ref]),
                                   rtol=0, atol=1e-5)


def test_rows_are_independent_and_deterministic():
    """A batched (OpenMP over rows) call equals one call per row, and repeats bit for bit."""
    trie = Trie(random_sids(500, [32, 32], 40))
    lp, scores, nodes = random_beam_state(trie, 16, 20, 1, 40, ties=True)
    a = trie_beam_step(lp, scores, nodes, trie)
    b = trie_beam_step(lp, scores, nodes, trie)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for r in range(16):
        one = trie_beam_step(lp[r:r + 1], scores[r:r + 1], nodes[r:r + 1], trie)
        assert all(torch.equal(x[r:r + 1], y) for x, y in zip(a, one))


# ---- bad arguments: every message names the argument ------------------------------------------

def _good():
    trie = Trie(torch.tensor([[0, 1], [0, 2], [1, 0]]))
    scores, nodes = beam_start(2, 3)
    return torch.zeros(2, 3, 2), scores, nodes, trie


@pytest.mark.parametrize("mutate,exc,msg", [
    (lambda a: a.update(log_probs=[[0.0]]), TypeError, "log_probs must be a torch.Tensor"),
    (lambda a: a.update(scores=1.0), TypeError, "scores must be a torch.Tensor"),
    (lambda a: a.update(nodes=None), TypeError, "nodes must be a torch.Tensor"),
    (lambda a: a.update(trie="t"), TypeError, "trie must be a resid_ext.Trie, got str"),
    (lambda a: a.update(log_probs=a["log_probs"].double()), ValueError, "log_probs must have dtype float32, got float64"),
    (lambda a: a.update(scores=a["scores"].half()), ValueError, "scores must have dtype float32, got float16"),
    (lambda a: a.update(nodes=a["nodes"].int()), ValueError, "nodes must have dtype int64, got int32"),
    (lambda a: a.update(log_probs=torch.zeros(6, 2)), ValueError, r"log_probs must be 3-D \[B, W, V\], got shape \[6, 2\]"),
    (lambda a: a.update(log_probs=torch.zeros(2, 0, 2)), ValueError, r"log_probs must be \[B, W, V\] with W >= 1 and V >= 1, got \[2, 0, 2\]"),
    (lambda a: a.update(scores=torch.zeros(2, 4)), ValueError, r"scores must have shape \[2, 3\], got \[2, 4\]"),
    (lambda a: a.update(nodes=torch.zeros(3, 3, dtype=torch.int64)), ValueError, r"nodes must have shape \[2, 3\], got \[3, 3\]"),
    (lambda a: a.update(log_probs=torch.zeros(2, 3, 2, device="meta")), ValueError, "all tensors and the trie must be on one device, got log_probs on meta"),
    (lambda a: a["nodes"].__setitem__((1, 2), 7), ValueError, r"nodes must be in \[-1, 6\) \(trie.num_nodes\), got 7"),
    (lambda a: a["nodes"].__setitem__((1, 2), -3), ValueError, r"nodes must be in \[-1, 6\) \(trie.num_nodes\), got -3"),
    (lambda a: a["nodes"].__setitem__((1, 0), -1), ValueError, r"nodes is -1 at index \[1, 0\] but scores there is > -inf"),
    (lambda a: a["scores"].__setitem__((0, 1), float("nan")), ValueError, r"scores has 1 NaN value\(s\), first at index \[0, 1\]"),
    (lambda a: (a["scores"].__setitem__((0, 1), 0.0), a["nodes"].__setitem__((0, 1), 1)), ValueError,
     r"live beams must all be at one trie depth, got nodes 0 \(depth 0\) and 1 \(depth 1\)"),
    (lambda a: a["nodes"].__setitem__((slice(None), 0), 4), ValueError, r"live beams are at leaves \(depth 2"),
    (lambda a: a.update(log_probs=torch.zeros(2, 3, 1)), ValueError,
     r"log_probs must have V >= 2 \(trie.level_sizes\[0\]"),
])
def test_bad_arguments(mutate, exc, msg):
    lp, scores, nodes, trie = _good()
    args = {"log_probs": lp, "scores": scores, "nodes": nodes, "trie": trie}
    mutate(args)
    with pytest.raises(exc, match="trie_beam_step: " + msg):
        trie_beam_step(args["log_probs"], args["scores"], args["nodes"], args["trie"])


def test_level_vocab_check_at_depth_one():
    lp, scores, nodes, trie = _good()
    step = trie_beam_step(lp, scores, nodes, trie)
    with pytest.raises(ValueError, match=r"V >= 3 \(trie.level_sizes\[1\]"):
        trie_beam_step(torch.zeros(2, 3, 2), step.scores, step.nodes, trie)


def test_unchecked_values_stay_memory_safe():
    lp, scores, nodes, trie = _good()
    nodes[:, 0] = 10**9  # out of range: treated as dead when checks are skipped
    out = trie_beam_step(lp, scores, nodes, trie, check_values=False)
    assert out.scores.eq(NEG_INF).all()


def test_nan_log_prob_is_not_a_continuation():
    sids = torch.tensor([[0, 0], [1, 0], [2, 0]])
    trie = Trie(sids)
    scores, nodes = beam_start(1, 3)
    lp = torch.tensor([[[-1.0, float("nan"), -2.0]] * 3])
    out = trie_beam_step(lp, scores, nodes, trie)
    assert out.codes[0].tolist() == [0, 2, -1] and out.scores[0, 2] == NEG_INF
    _assert_same(out, trie_beam_step_ref(lp, scores, nodes, trie))


def test_parallel_rows_equal_serial_rows():
    """~57k candidates: the batched call takes the OpenMP path (>= 32k), each one-row call the
    serial one; both must agree, and two rows are checked against the reference."""
    trie = Trie(random_sids(8000, [128, 128], 50))
    lp, scores, nodes = random_beam_state(trie, 16, 64, 1, 50, dead=0.1)
    out = trie_beam_step(lp, scores, nodes, trie)
    for r in range(16):
        one = trie_beam_step(lp[r:r + 1], scores[r:r + 1], nodes[r:r + 1], trie)
        assert all(torch.equal(x[r:r + 1], y) for x, y in zip(out, one))
    _assert_same(BeamStep(*(x[:2] for x in out)), trie_beam_step_ref(lp[:2], scores[:2], nodes[:2], trie))


def test_unchecked_equals_checked_on_valid_input():
    trie = Trie(random_sids(200, [16, 16], 51))
    lp, scores, nodes = random_beam_state(trie, 5, 7, 1, 51, ties=True)
    a = trie_beam_step(lp, scores, nodes, trie)
    b = trie_beam_step(lp, scores, nodes, trie, check_values=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
