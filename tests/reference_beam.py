"""Slow, obvious references for the trie and the trie beam step (the readable spec).

- ``trie_paths``: every node's code path from the root, read back from a trie's CSR.
- ``trie_beam_step_ref``: one beam step with plain Python loops.
- ``RandomModel``: a fixed "model" giving log-probs per (user, prefix), same every call.
- ``beam_search_ref``: plain-torch beam search over prefixes of the SID table (no trie object).
- ``exhaustive_ref`` / ``greedy_ref``: score every valid SID / constrained greedy decoding.
- ``random_sids`` / ``random_beam_state``: seeded random SID tables and beam-step inputs.
"""
from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def trie_paths(trie) -> dict[int, tuple[int, ...]]:
    """node id -> tuple of codes from the root, walking the CSR (trie on cpu)."""
    off, tok, child = trie.child_offsets.tolist(), trie.child_tokens.tolist(), trie.child_nodes.tolist()
    paths = {0: ()}
    stack = [0]
    while stack:
        n = stack.pop()
        for e in range(off[n], off[n + 1]):
            paths[child[e]] = paths[n] + (tok[e],)
            stack.append(child[e])
    return paths


def trie_beam_step_ref(log_probs: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie):
    """log_probs [B, W, V] float32, scores [B, W] float32, nodes [B, W] int64, trie on cpu.

    Candidates: live beam w (score > -inf), child (code, node) of its trie node, total =
    score + log_prob (float32), kept if total > -inf. Per row the W best by total descending,
    ties by (parent slot, code) ascending; padding: -inf, -1, -1, -1.
    Returns (scores, nodes, parents, codes), each [B, W].
    """
    B, W, V = log_probs.shape
    off, tok, child = trie.child_offsets.tolist(), trie.child_tokens.tolist(), trie.child_nodes.tolist()
    out_s = torch.full((B, W), NEG_INF, dtype=torch.float32)
    out_n = torch.full((B, W), -1, dtype=torch.int64)
    out_p = torch.full((B, W), -1, dtype=torch.int64)
    out_c = torch.full((B, W), -1, dtype=torch.int64)
    for b in range(B):
        cands = []
        for w in range(W):
            s = scores[b, w]
            if not bool(s > NEG_INF):
                continue
            n = int(nodes[b, w])
            for e in range(off[n], off[n + 1]):
                total = s + log_probs[b, w, tok[e]]  # float32 add, as the kernels do
                if bool(total > NEG_INF):
                    cands.append((float(total), w, tok[e], child[e]))
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        for r, (total, w, code, node) in enumerate(cands[:W]):
            out_s[b, r], out_n[b, r], out_p[b, r], out_c[b, r] = total, node, w, code
    return out_s, out_n, out_p, out_c


class RandomModel:
    """Fixed random log-probs per (user, prefix): log_softmax of seeded Gaussian logits.

    level_sizes[l] codes at level l; ``ties=True`` rounds logits to multiples of 0.5 so equal
    scores (and the tie rule) actually occur.
    """

    def __init__(self, level_sizes: list[int], seed: int, ties: bool = False) -> None:
        self.level_sizes, self.seed, self.ties = list(level_sizes), seed, ties
        self._cache: dict[tuple, torch.Tensor] = {}

    def log_probs(self, user: int, prefix: tuple[int, ...]) -> torch.Tensor:
        key = (user, prefix)
        if key not in self._cache:
            g = torch.Generator().manual_seed(hash((self.seed,) + key) & 0x7FFFFFFF)
            logits = torch.randn(self.level_sizes[len(prefix)], generator=g) * 2.0
            if self.ties:
                logits = (logits * 2).round() / 2
            self._cache[key] = torch.log_softmax(logits, dim=0)
        return self._cache[key]


def beam_search_ref(sids: torch.Tensor, model: RandomModel, user: int, width: int):
    """Plain beam search over valid prefixes of sids [N, L] for one user.

    Beams are (score, prefix) lists sorted best first; each step scores every valid extension
    of every beam and keeps the best ``width`` by score desc, ties by (beam position, code).
    Returns [(score, item row)] best first (at most ``width``).
    """
    rows = [tuple(r) for r in sids.tolist()]
    valid = {r[:k] for r in rows for k in range(len(rows[0]) + 1)}
    beams: list[tuple[torch.Tensor, tuple[int, ...]]] = [(torch.tensor(0.0), ())]
    for level in range(sids.shape[1]):
        cands = []
        for pos, (s, prefix) in enumerate(beams):
            lp = model.log_probs(user, prefix)
            for code in range(model.level_sizes[level]):
                if prefix + (code,) in valid:
                    total = s + lp[code]
                    if float(total) > NEG_INF:
                        cands.append((float(total), pos, code, total, prefix + (code,)))
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        beams = [(c[3], c[4]) for c in cands[:width]]
    return [(float(s), rows.index(p)) for s, p in beams]


def exhaustive_ref(sids: torch.Tensor, model: RandomModel, user: int):
    """Every item scored by the sum of its codes' log-probs (float32, level by level), sorted
    by score desc, ties by SID ascending. Returns [(score, item row)]."""
    out = []
    for i, row in enumerate(sids.tolist()):
        s = torch.tensor(0.0)
        for level, code in enumerate(row):
            s = s + model.log_probs(user, tuple(row[:level]))[code]
        out.append((float(s), tuple(row), i))
    out.sort(key=lambda x: (-x[0], x[1]))
    return [(s, i) for s, _, i in out]


def greedy_ref(sids: torch.Tensor, model: RandomModel, user: int):
    """Constrained greedy: at each level take the valid code with the highest log-prob (lowest
    code on ties). Returns (score, item row)."""
    rows = [tuple(r) for r in sids.tolist()]
    prefix: tuple[int, ...] = ()
    s = torch.tensor(0.0)
    for level in range(sids.shape[1]):
        codes = sorted({r[level] for r in rows if r[:level] == prefix})
        lp = model.log_probs(user, prefix)
        best = max(codes, key=lambda c: (float(lp[c]), -c))
        s = s + lp[best]
        prefix = prefix + (best,)
    return float(s), rows.index(prefix)


def random_sids(n: int, level_sizes: list[int], seed: int) -> torch.Tensor:
    """n distinct random SIDs [n, L] int64 (n <= prod(level_sizes)), in random row order."""
    total = math.prod(level_sizes)
    assert n <= total
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(total, generator=g)[:n]
    cols = []
    for v in reversed(level_sizes):
        cols.append(flat % v)
        flat = flat // v
    return torch.stack(list(reversed(cols)), dim=1)


def random_beam_state(trie, B: int, W: int, depth: int, seed: int, ties: bool = False, dead: float = 0.3,
                      extra_v: int = 0):
    """Random (log_probs [B, W, V], scores [B, W], nodes [B, W]) with every beam at ``depth``.

    Nodes are distinct per row when the level has >= W nodes, else drawn with repetition (two
    beams on one node is legal). About ``dead`` of the beams are dead (-inf), half of those with
    node -1; 10% of log-probs are -inf (codes a model masked); ``ties`` rounds values to 0.5.
    """
    g = torch.Generator().manual_seed(seed)
    V = trie.level_sizes[depth] + extra_v
    lp = torch.randn(B, W, V, generator=g).log_softmax(-1)
    if ties:
        lp = (lp * 2).round() / 2
    lp[torch.rand(B, W, V, generator=g) < 0.1] = NEG_INF  # codes a model masked
    lo, hi = trie.level_offsets[depth], trie.level_offsets[depth + 1]
    nodes = torch.empty(B, W, dtype=torch.int64)
    for b in range(B):
        pick = torch.randperm(hi - lo, generator=g)[:W] + lo
        nodes[b] = pick[torch.randint(len(pick), (W,), generator=g)] if len(pick) < W else pick
    scores = -torch.rand(B, W, generator=g) * 5
    if ties:
        scores = (scores * 2).round() / 2
    scores[torch.rand(B, W, generator=g) < dead] = NEG_INF
    nodes[(scores == NEG_INF) & (torch.rand(B, W, generator=g) < 0.5)] = -1
    return lp, scores, nodes
