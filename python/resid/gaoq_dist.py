"""GAOQ on several processes (torchrun): parents split across ranks, results gathered.

``fit_sharded(z, ...)`` runs the GAOQ algorithm of :mod:`resid.gaoq` with the work of every
level >= 2 split by parent across ranks (contiguous blocks of parents, ``shard_range``): rank r
reads only the embedding rows of its parents (``z`` may be a memory-mapped ``embeddings.npy``
that every rank opens), runs their segmented balanced k-means and Hungarian alignments, and
the per-level tree arrays (O(nodes * d)) and per-item node labels (O(N) int64) are gathered.

Same SIDs as the single process, where the algorithm allows:
- levels >= 2 and the last level: identical to one process for any world size. The
  segmented k-means draws every parent's k-means++ seeds from one generator stream, parent
  after parent; each rank replays that stream over the parents before its block (k-means++
  only reads a seeded subsample of <= 64*k rows per parent, so this is cheap) and so starts
  its parents from the exact same seeds. The balanced assignment and centroid updates are
  per-segment, hence identical.
- level 1 (``level1_sample=None``, default): every rank runs the level-1 balanced k-means on
  all N rows, exactly as one process (level 1 then needs O(N*d) memory on every rank).
- level 1 with ``level1_sample=S < N``: centroids are fitted on a seeded sample of S rows
  (the same on every rank) and all items are then assigned by the balanced kernel in fixed
  chunks of ``chunk_rows`` rows split across ranks, with per-chunk capacities that add up to
  the global ceil/floor(N/b1) sizes. Memory per rank is then O(S*d + chunk*d + N) and the SIDs
  depend on (seed, S, chunk_rows) but NOT on the world size; they differ from a one-process
  ``GAOQ.fit`` (whose level 1 sees every row in every Lloyd iteration), which is why this mode
  is opt-in.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from resid import distributed as D
from resid.io import duplicate_rows
from resid.gaoq import (
    GAOQ, GAOQConfig, _kmeans_root, _match, _Tree, auto_branching, check_branching, fingerprint,
    validate_embeddings,
)


class _LazyRows:
    """Rows ``rows`` of a (memory-mapped) matrix, read only when indexed: k-means++ seeding
    of a parent touches only its seeded subsample. Quacks like the [n, d] tensor
    ``resid.kmeans._kmeanspp_from`` expects."""

    def __init__(self, z: Any, rows: np.ndarray) -> None:
        self.z, self.rows = z, rows
        self.shape = (len(rows), z.shape[1])
        self.device = torch.device("cpu")

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        sel = self.rows[idx.cpu().numpy()]
        return torch.from_numpy(_read(self.z, sel))


def _read(z: Any, rows: np.ndarray) -> np.ndarray:
    """z[rows] as float32 [len(rows), d], reading in ascending row order (friendly to mmap)."""
    if len(rows) == 0:
        return np.zeros((0, z.shape[1]), dtype=np.float32)
    uniq, inv = np.unique(rows, return_inverse=True)
    return np.ascontiguousarray(np.asarray(z[uniq], dtype=np.float32)[inv])


def _gather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenate per-rank blocks (rank order) of any numpy array; uint64 travels as int64."""
    if local.dtype == np.uint64:
        return D.gather_concat(torch.from_numpy(local.view(np.int64))).numpy().view(np.uint64)
    return D.gather_concat(torch.from_numpy(np.ascontiguousarray(local))).numpy()


def _gather_labels(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    return D.gather_by_index(torch.from_numpy(values.astype(np.int64)), torch.from_numpy(index.astype(np.int64)), n).numpy()


def fit_sharded(
    z: Any,
    branching: tuple[int, ...] | None = None,
    anchors: tuple[int, ...] | None = None,
    seed: int = 0,
    iters: int = 20,
    level1_sample: int | None = None,
    chunk_rows: int = 65536,
) -> GAOQ:
    """Fit GAOQ on ``z`` ([N, d] float32 array or np.memmap, the same on every rank) with the
    per-parent work split across the ranks of the current process group (one process works
    too). Returns a fitted :class:`GAOQ` on every rank (``.codes`` -> [N, L] int64)."""
    fn = "fit_sharded"
    if getattr(z, "ndim", None) != 2:
        raise ValueError(f"{fn}: embeddings must be 2-D [N, d], got shape {list(getattr(z, 'shape', []))}")
    n, d = z.shape
    gq = GAOQ(branching, anchors, seed=seed, iters=iters, progress=False)
    cfg: GAOQConfig = gq.config
    b = check_branching(cfg.branching or auto_branching(n), n, fn)
    g = gq._anchor_counts(b)
    if level1_sample is not None and level1_sample < b[0]:
        raise ValueError(f"{fn}: level1_sample={level1_sample} must be >= b1={b[0]}")
    if chunk_rows < 1:
        raise ValueError(f"{fn}: chunk_rows must be >= 1, got {chunk_rows}")
    D.check_config({"n": n, "d": d, "branching": list(b), "anchors": list(g), "seed": seed, "iters": iters,
                    "level1_sample": level1_sample, "chunk_rows": chunk_rows}, "GAOQ config")
    tree = _Tree(dim=d, branching=b)
    info: dict[str, Any] = {"method": "gaoq", "branching": list(b), "anchors": [], "anchor_max_cos": [],
                            "sharded": {"world_size": D.get_world_size(), "level1_sample": level1_sample}}

    # Level 1 (see module docstring). Rows are validated as they are read.
    if level1_sample is None or level1_sample >= n:
        c1, node = _kmeans_root(validate_embeddings(_read(z, np.arange(n)), fn=fn), b[0], cfg.iters, cfg.seed)
    else:
        sample = np.sort(D.epoch_permutation(n, cfg.seed, 0)[:level1_sample])
        c1, _ = _kmeans_root(validate_embeddings(_read(z, sample), fn=fn), b[0], cfg.iters, cfg.seed)
        node = _assign_level1(z, c1, chunk_rows, fn)
    tree.centroids.append(c1)
    tree.sizes.append(np.bincount(node, minlength=b[0]))
    tree.node_codes.append(np.arange(b[0], dtype=np.int64))
    for lvl in range(1, len(b)):
        node = _fit_level(gq, tree, z, node, b[lvl], g[lvl - 1], cfg.seed + lvl, info, fn)
    _fit_last(tree, z, node, cfg.seed + len(b), cfg.anchor_steps, info)
    a, e = D.shard_range(n)
    tree.prints = _gather_rows(fingerprint(_read(z, np.arange(a, e))))
    gq.tree = tree
    info["last_size"] = tree.last_size
    gq.fit_info = info
    info["code_sizes"] = gq.code_sizes()
    return gq


def _assign_level1(z: Any, c1: np.ndarray, chunk_rows: int, fn: str) -> np.ndarray:
    """Balanced assignment of all rows to ``c1`` [k, d] in fixed chunks (independent of the
    world size), chunks split across ranks. Chunk [s, e) gets capacity
    #{i in [s, e): i mod k == c} for cluster c, so the capacities of all chunks add up to the
    single-problem sizes (n % k clusters of ceil(n/k), the rest floor(n/k)). -> [N] int64."""
    from resid_ext.balanced import balanced_assign

    n, k = z.shape[0], c1.shape[0]
    size = max(chunk_rows, k)
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < k:  # keep every chunk >= k rows
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [n]))
    lo, hi = D.shard_range(len(bounds))
    cent = torch.from_numpy(np.ascontiguousarray(c1, dtype=np.float32))
    labels, index = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for s, e in bounds[lo:hi]:
        x = torch.from_numpy(validate_embeddings(_read(z, np.arange(s, e)), fn=fn))
        cls = (np.arange(s, e) % k)
        cap = torch.from_numpy(np.bincount(cls, minlength=k).astype(np.int64))
        labels.append(balanced_assign(x, cent, cap).numpy())
        index.append(np.arange(s, e))
    return _gather_labels(np.concatenate(labels), np.concatenate(index), n)


def _fit_level(gq: GAOQ, tree: _Tree, z: Any, node: np.ndarray, b: int, g: int, seed: int,
               info: dict[str, Any], fn: str) -> np.ndarray:
    """One aligned level, parents split across ranks -> child node of every item [N] int64.
    Mirrors ``GAOQ._fit_level`` + ``resid.kmeans.balanced_kmeans_segmented`` segment by
    segment (see the module docstring for why the result is the same)."""
    from resid.anchors import make_anchors, max_coherence
    from resid.kmeans import _seed_draws, lloyd, seed_segments
    from resid_ext.balanced import caller_threads, default_capacity, torch_threads

    parents = tree.centroids[-1]
    p = len(parents)
    counts = np.bincount(node, minlength=p)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    order = np.argsort(node, kind="stable")  # items grouped by parent, ascending row inside
    ks = np.minimum(b, counts)
    a, e = D.shard_range(p)
    # The seeding stream's draws over parents [0, e) (those of [0, a) only advance it to this
    # rank's first parent); seeds for this rank's own parents only.
    gen = torch.Generator().manual_seed(seed)
    seeded = [s for s in range(e) if ks[s] > 0]
    draws = [_seed_draws(int(counts[s]), int(ks[s]), gen) for s in seeded]
    mine = [i for i, s in enumerate(seeded) if s >= a]
    own = [seeded[i] for i in mine]  # this rank's parents with clusters
    with torch_threads(1):
        cents = [torch.zeros((0, z.shape[1]), dtype=torch.float32)]
        cents += seed_segments(
            lambda j: _LazyRows(z, order[offsets[own[j]] : offsets[own[j] + 1]]),
            [int(ks[s]) for s in own], [draws[i] for i in mine], caller_threads(),
        )
    rows = order[offsets[a] : offsets[e]]
    x = torch.from_numpy(validate_embeddings(_read(z, rows), fn=fn))
    seg = torch.from_numpy(offsets[a : e + 1] - offsets[a])
    c_off = torch.from_numpy(np.concatenate([[0], np.cumsum(ks[a:e])]).astype(np.int64))
    cap = torch.cat([torch.zeros(0, dtype=torch.int64)] + [default_capacity(int(counts[s]), int(ks[s])) for s in range(a, e) if ks[s] > 0])
    centroids = torch.cat(cents)
    if len(rows):
        # early_stop as in balanced_kmeans_segmented: only when the level has one parent in all.
        centroids, labels, _ = lloyd(fn, x, seg, centroids, c_off, cap, gq.config.iters, early_stop=p == 1)
        lab_global = labels.numpy()
    else:
        lab_global = np.zeros(0, np.int64)
    # Local child index in [0, k_s) per item; children of a parent with k_s < b stay empty.
    seg_of_item = np.repeat(np.arange(a, e), counts[a:e])
    local = lab_global - c_off.numpy()[seg_of_item - a]
    child = seg_of_item * b + local
    cent_np = centroids.numpy()
    my_cent = np.repeat(parents[a:e], b, axis=0).astype(np.float32)  # empty child -> its parent
    for s in range(a, e):
        kk = int(ks[s])
        my_cent[(s - a) * b : (s - a) * b + kk] = cent_np[c_off[s - a] : c_off[s - a] + kk]
    anchors = make_anchors(g, z.shape[1], seed, gq.config.anchor_steps)
    res = my_cent.reshape(e - a, b, -1) - parents[a:e, None, :]
    codes = np.stack([_match(res[i], anchors) for i in range(e - a)]) if e > a else np.zeros((0, b), np.int64)
    tree.anchors.append(anchors)
    info["anchors"].append(g)
    info["anchor_max_cos"].append(max_coherence(anchors))
    tree.centroids.append(_gather_rows(my_cent))
    tree.node_codes.append(_gather_rows(codes.astype(np.int64).reshape(-1)))
    child_all = _gather_labels(child, rows, len(node))
    tree.sizes.append(np.bincount(child_all, minlength=p * b))
    return child_all


def _fit_last(tree: _Tree, z: Any, leaf: np.ndarray, seed: int, anchor_steps: int, info: dict[str, Any]) -> None:
    """Disambiguating level, leaves split across ranks (``GAOQ._fit_last``)."""
    from resid.anchors import make_anchors, max_coherence

    n = len(leaf)
    counts = tree.sizes[-1]
    m = int(counts.max())
    tree.last_size = m
    order = np.argsort(leaf, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    anchors = make_anchors(m, z.shape[1], seed, anchor_steps)
    tree.anchors.append(anchors)
    info["anchors"].append(m)
    info["anchor_max_cos"].append(max_coherence(anchors))
    a, e = D.shard_range(len(counts))
    rows = order[offsets[a] : offsets[e]]
    res = _read(z, rows) - tree.centroids[-1][leaf[rows]]
    last = np.empty(len(rows), dtype=np.int64)
    base = offsets[a]
    for s in range(a, e):
        lo, hi = offsets[s] - base, offsets[s + 1] - base
        if hi > lo:
            last[lo:hi] = _match(res[lo:hi], anchors)
    last_all = _gather_labels(last, rows, n)
    tree.codes = np.concatenate([GAOQ._prefix_codes(tree, leaf), last_all[:, None]], axis=1)
    tree.leaf = leaf.astype(np.int64)
    dup = duplicate_rows(tree.codes)
    if dup:
        raise RuntimeError(f"fit_sharded: internal error, {dup} duplicate SIDs")
