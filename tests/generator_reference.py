"""Slow, obvious references for the generator's decoding (tests only).

- ``DenseTrie`` + ``torch_trie_beam_step``: the beam-step contract in plain torch (dense
  [num_nodes, V] child table), used to test the decoding loop independently of the C++ kernel.
- ``reference_beam_search``: a plain beam search that recomputes the full decoder every step
  (no KV cache, no per-user cross-attention sharing), masking invalid tokens from a Python
  dict of prefixes, with the same tie rule (parent slot, code).
- ``exhaustive_scores``: teacher-forced log-prob of every valid SID.
"""
from __future__ import annotations

import numpy as np
import torch

from resid.generator import BOS, Generator


class DenseTrie:
    """Trie of an [N, L] SID table; node 0 = root, children numbered in order of creation."""

    def __init__(self, sids: np.ndarray):
        sids = np.asarray(sids, dtype=np.int64)
        vmax = int(sids.max()) + 1
        child: list[list[int]] = [[-1] * vmax]
        item: list[int] = [-1]
        for row, sid in enumerate(sids):
            node = 0
            for c in sid:
                if child[node][c] < 0:
                    child[node][c] = len(child)
                    child.append([-1] * vmax)
                    item.append(-1)
                node = child[node][c]
            item[node] = row
        self.child = torch.tensor(child, dtype=torch.int64)
        self.item = torch.tensor(item, dtype=torch.int64)

    def items(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.item[nodes]


def torch_trie_beam_step(log_probs: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie: DenseTrie):
    """The ``resid_ext.trie_beam_step`` contract. log_probs [B, W, V], scores [B, W], nodes [B, W]."""
    B, W, V = log_probs.shape
    child = trie.child[nodes]  # [B, W, vmax]
    if child.shape[-1] < V:
        child = torch.cat([child, child.new_full((B, W, V - child.shape[-1]), -1)], -1)
    child = child[..., :V]
    cand = scores.unsqueeze(-1) + log_probs
    cand = torch.where((child >= 0) & torch.isfinite(scores).unsqueeze(-1), cand, torch.full_like(cand, float("-inf")))
    flat = cand.reshape(B, W * V)
    top, idx = torch.sort(flat, dim=1, descending=True, stable=True)  # stable: ties by (parent, code)
    top, idx = top[:, :W], idx[:, :W]
    dead = ~torch.isfinite(top)
    new_nodes = child.reshape(B, W * V).gather(1, idx)
    return (top, torch.where(dead, 0, new_nodes), torch.where(dead, -1, idx // V), torch.where(dead, -1, idx % V))


@torch.no_grad()
def reference_beam_search(model: Generator, enc: torch.Tensor, mask: torch.Tensor, sids: np.ndarray, beam: int):
    """Plain beam search, one user at a time. Returns (items [B, beam], scores [B, beam]) lists."""
    model.eval()
    vocab = model.vocab
    L = sids.shape[1]
    prefixes: dict[tuple[int, ...], list[int]] = {}
    leaf: dict[tuple[int, ...], int] = {}
    for row, sid in enumerate(np.asarray(sids)):
        for l in range(L):
            prefixes.setdefault(tuple(int(c) for c in sid[:l]), [])
            if int(sid[l]) not in prefixes[tuple(int(c) for c in sid[:l])]:
                prefixes[tuple(int(c) for c in sid[:l])].append(int(sid[l]))
        leaf[tuple(int(c) for c in sid)] = row
    out_items, out_scores = [], []
    for b in range(enc.shape[0]):
        beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
        for l in range(L):
            dec = torch.tensor([[BOS] + [vocab.offsets[j] + c for j, c in enumerate(p)] for _, p in beams])
            logits = model(enc[b : b + 1].expand(len(beams), -1), mask[b : b + 1].expand(len(beams), -1), dec)
            lp = torch.log_softmax(logits[:, -1].float(), -1)
            cands = []
            for i, (s, p) in enumerate(beams):
                for c in sorted(prefixes[p]):
                    cands.append((s + float(lp[i, vocab.offsets[l] + c]), i, c))
            cands.sort(key=lambda t: (-t[0], t[1], t[2]))
            beams = [(s, beams[i][1] + (c,)) for s, i, c in cands[:beam]]
        items = [leaf[p] for _, p in beams] + [-1] * (beam - len(beams))
        scores = [s for s, _ in beams] + [float("-inf")] * (beam - len(beams))
        out_items.append(items)
        out_scores.append(scores)
    return torch.tensor(out_items), torch.tensor(out_scores)


@torch.no_grad()
def exhaustive_scores(model: Generator, enc: torch.Tensor, mask: torch.Tensor, sids: np.ndarray) -> torch.Tensor:
    """[B, N] teacher-forced log-prob of every item's SID for every user."""
    model.eval()
    tok = model.vocab.tokens(torch.as_tensor(sids, dtype=torch.int64))
    N = tok.shape[0]
    rows = []
    for b in range(enc.shape[0]):
        rows.append(model.sequence_log_prob(enc[b : b + 1].expand(N, -1), mask[b : b + 1].expand(N, -1), tok))
    return torch.stack(rows)


def synthetic_dataset(sequences: list[list[int]], num_items: int, name: str = "synthetic"):
    """A PreparedDataset with only the item_id field, from per-user item-row sequences."""
    from resid.data.dataset import PreparedDataset

    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return PreparedDataset(
        name=name, fields=["item_id"], item_ids=np.array([f"i{i}" for i in range(num_items)]),
        item_features=np.arange(1, num_items + 1, dtype=np.int64)[:, None], vocab_sizes=[num_items + 2],
        field_values=[np.array([f"i{i}" for i in range(num_items)])],
        user_ids=np.array([f"u{u}" for u in range(len(sequences))]), seq_offsets=offsets,
        seq_items=np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]),
    )
