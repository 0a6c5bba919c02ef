"""CUDA twin vs CPU twin: trie placement and trie_beam_step outputs equal bit for bit.

Skips where no GPU (or no CUDA build) is present.
"""
import sys
from pathlib import Path

import pytest
import torch

import resid_ext
from resid_ext import Trie, beam_start, trie_beam_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared references
from reference_beam import RandomModel, random_beam_state, random_sids  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and resid_ext.has_cuda()), reason="needs a GPU and resid_ext built with RESID_CUDA=1"
)


def _same(a, b) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x.cpu(), y.cpu())


@pytest.mark.parametrize("n,levels,seed", [(1, [3], 0), (200, [8, 8, 8], 1), (3000, [64, 64], 2)])
def test_trie_on_cuda_equals_cpu(n, levels, seed):
    sids = random_sids(n, levels, seed)
    cpu = Trie(sids)
    for gpu in (Trie(sids.cuda()), cpu.to("cuda")):
        assert gpu.device.type == "cuda"
        for name in ("child_offsets", "child_tokens", "child_nodes", "leaf_items"):
            assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
        assert gpu.level_offsets == cpu.level_offsets and gpu.level_sizes == cpu.level_sizes
        nodes = torch.arange(-1, cpu.num_nodes).reshape(-1, 1)
        assert torch.equal(gpu.items(nodes.cuda()).cpu(), cpu.items(nodes))


@pytest.mark.parametrize("levels,n,B,W,depth,ties,seed", [
    ([4, 5, 6], 60, 3, 4, 1, False, 0), ([4, 5, 6], 60, 3, 4, 2, True, 1), ([8, 8], 40, 4, 16, 1, True, 2),
    ([3, 3, 3], 27, 2, 30, 2, False, 3), ([16, 16], 200, 5, 7, 0, False, 4), ([16, 16], 256, 3, 1, 1, True, 5),
    ([64, 64], 3000, 8, 256, 1, True, 6), ([300, 40], 5000, 4, 300, 1, False, 7), ([2000, 4], 6000, 2, 50, 0, False, 8),
    ([50, 50], 2500, 2, 1024, 1, True, 9), ([256, 256, 256], 20000, 64, 50, 1, False, 10),
])
def test_step_cuda_equals_cpu(levels, n, B, W, depth, ties, seed):
    trie = Trie(random_sids(n, levels, seed))
    gtrie = trie.to("cuda")
    for variant in range(3):
        lp, scores, nodes = random_beam_state(trie, B, W, depth, seed * 10 + variant, ties=ties)
        if variant == 1:  # all log-probs equal: every selection is decided by the tie rule
            lp = torch.zeros_like(lp)
            scores = torch.where(scores > float("-inf"), torch.zeros_like(scores), scores)
        if variant == 2:  # non-contiguous device inputs
            lp = lp.transpose(0, 1).contiguous().transpose(0, 1)
        ref = trie_beam_step(lp, scores, nodes, trie)
        got = trie_beam_step(lp.cuda(), scores.cuda(), nodes.cuda(), gtrie)
        assert got.scores.device.type == "cuda"
        _same(got, ref)


def test_whole_search_cuda_equals_cpu():
    levels = [32, 32, 32]
    sids = random_sids(4000, levels, 11)
    model = RandomModel(levels, 11, ties=True)
    trie, gtrie = Trie(sids), Trie(sids.cuda())
    B, W = 4, 20
    outs = []
    for t, dev in ((trie, "cpu"), (gtrie, "cuda")):
        scores, nodes = beam_start(B, W, dev)
        prefixes = [[()] * W for _ in range(B)]
        for level in range(3):
            lp = torch.zeros(B, W, levels[level])
            for b in range(B):
                for w in range(W):
                    if scores[b, w] > float("-inf"):
                        lp[b, w] = model.log_probs(b, prefixes[b][w])
            out = trie_beam_step(lp.to(dev), scores, nodes, t)
            par, cod = out.parents.cpu().tolist(), out.codes.cpu().tolist()
            prefixes = [[prefixes[b][p] + (c,) if p >= 0 else () for p, c in zip(par[b], cod[b])] for b in range(B)]
            scores, nodes = out.scores, out.nodes
        outs.append((scores.cpu(), t.items(nodes).cpu()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_cuda_width_limit_message():
    trie = Trie(torch.tensor([[0], [1]])).to("cuda")
    scores, nodes = beam_start(1, 1025, "cuda")
    with pytest.raises(ValueError, match="trie_beam_step: beam width W must be <= 1024 on CUDA, got 1025"):
        trie_beam_step(torch.zeros(1, 1025, 2, device="cuda"), scores, nodes, trie)


def test_cuda_device_mismatch_named():
    trie = Trie(torch.tensor([[0], [1]]))
    scores, nodes = beam_start(1, 2, "cuda")
    with pytest.raises(ValueError, match="trie on cpu"):
        trie_beam_step(torch.zeros(1, 2, 2, device="cuda"), scores, nodes, trie)
