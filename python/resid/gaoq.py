"""GAOQ: Globally Aligned Orthogonal Quantization (paper Sec. 3.3, Appendix G, K Alg. 1).

``GAOQ(branching=(b1, b2)).fit(z)`` turns item embeddings ``z: [N, d] float32`` into unique
semantic IDs ``[N, L]`` int64 with ``L = len(branching) + 1``:

- level 1: balanced k-means over all items into ``b1`` clusters; the cluster index is the code;
- level l in 2..L-1: balanced k-means into ``b_l`` children inside every parent (all parents of
  a level in one segmented kernel call); each child centroid minus its parent's centroid is
  matched to ``g_l >= b_l`` anchors shared by all parents (Hungarian on cosine), and the matched
  anchor index is the code, so one code means one direction under every prefix;
- level L (disambiguation): inside each prefix, every item's offset from its leaf centroid is
  matched to ``m`` shared anchors, ``m`` = the largest prefix population, so SIDs are unique and
  the last index is aligned the same way.

Tree nodes: the node of level l has id ``parent * b_l + child`` (level 1: the cluster index), so
``node_l = leaf // prod(b_{l+1..L-1})``. The fitted state keeps per-level node centroids, sizes
and codes (the Hungarian matchings), the anchors and the SID table; peak memory is O(N*d).
``assign`` gives new items SIDs by descending this tree (see its docstring).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from resid.anchors import make_anchors, max_coherence, pca_anchors
from resid.io import atomic_write, duplicate_rows


#: Largest last level GAOQ aligns (anchors + Hungarian per leaf are quadratic in it).
MAX_LAST_SIZE = 4096


@dataclass
class GAOQConfig:
    """``branching``: b1..b_{L-1} (None = automatic, two levels with b1*b2 ~ N/15, Appendix G);
    the last, disambiguating level is always added. ``anchors``: g_l for levels 2..L-1
    (None = g_l = b_l, the paper's default). ``anchor_basis``: "random" (the paper: seeded QR,
    or an optimised low-coherence set when g > d) or "pca" (the top-g principal directions of
    the level's centred child centroids / the last level's item offsets; falls back to
    "random" where g exceeds their rank bound min(count, d))."""

    branching: tuple[int, ...] | None = None
    anchors: tuple[int, ...] | None = None
    iters: int = 20
    seed: int = 0
    anchor_steps: int = 300
    anchor_basis: str = "random"


def auto_branching(n: int, ratio: float = 15.0) -> tuple[int, int]:
    """(b1, b2) with b1*b2 about ``n / ratio`` (paper App. G: 10-20x smaller than N), b >= 2."""
    b = max(2, int(round(math.sqrt(n / ratio))))
    return b, b


def fingerprint(x: np.ndarray) -> np.ndarray:
    """64-bit FNV-style hash of each row's float32 bytes: [N, d] -> [N] uint64. Lets ``assign``
    recognise an embedding it has already given a SID (same bytes -> same SID)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    h = np.full(len(bits), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(bits.shape[1]):
            h = (h ^ bits[:, j]) * prime
    return h


def validate_embeddings(z: Any, name: str = "embeddings", fn: str = "GAOQ.fit", dim: int | None = None) -> np.ndarray:
    """-> [N, d] float32 contiguous; rejects non-2-D input, a wrong dim and NaN/inf rows (named)."""
    if hasattr(z, "detach"):
        z = z.detach().cpu().numpy()
    z = np.ascontiguousarray(np.asarray(z, dtype=np.float32))
    if z.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-D [N, d], got shape {list(z.shape)}")
    if dim is not None and z.shape[1] != dim:
        raise ValueError(f"{fn}: {name} have dim {z.shape[1]} but the quantizer was fitted on dim {dim}")
    bad = np.nonzero(~np.isfinite(z).all(axis=1))[0]
    if len(bad):
        rows = ", ".join(str(int(r)) for r in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(f"{fn}: {name} has {len(bad)} rows with NaN/inf values: rows {rows}")
    return z


def check_branching(branching: Any, n: int | None, fn: str) -> tuple[int, ...]:
    b = tuple(int(v) for v in branching)
    if not b or any(v < 2 for v in b):
        raise ValueError(f"{fn}: every branching factor must be >= 2, got {list(b)}")
    if n is not None and n < b[0]:
        raise ValueError(f"{fn}: {n} items is fewer than the first branching factor b1={b[0]}")
    return b


# ---- the balanced k-means kernels (resid.kmeans, built on resid_ext.balanced_assign*) ------
def _kmeans_root(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced k-means of all rows: (centroids [k, d] float32, labels [N] int64)."""
    from resid.kmeans import balanced_kmeans

    c, lab = balanced_kmeans(_tensor(x), k, iters=iters, seed=seed)
    return _np(c, np.float32), _np(lab, np.int64)


def _kmeans_segments(x: np.ndarray, offsets: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced k-means inside every segment of ``x`` (rows grouped by parent) in one call ->
    (centroids [S*k, d], labels [N] local in [0, k)). A segment with n_s < k rows gets n_s
    clusters from the kernel; its other k - n_s slots stay empty (NaN centroids here, replaced
    by the caller)."""
    import torch

    from resid.kmeans import balanced_kmeans_segmented

    out = balanced_kmeans_segmented(_tensor(x), torch.from_numpy(offsets), k, iters=iters, seed=seed)
    cent, c_off, lab = _np(out.centroids, np.float32), _np(out.centroid_offsets, np.int64), _np(out.labels, np.int64)
    s = len(offsets) - 1
    ks = np.diff(c_off)
    seg = np.repeat(np.arange(s), np.diff(offsets))  # segment of each (sorted) row
    full = np.full((s * k, x.shape[1]), np.nan, dtype=np.float32)
    slot = np.repeat(np.arange(s) * k, ks) + (np.arange(len(cent)) - np.repeat(c_off[:-1], ks))
    full[slot] = cent
    return full, lab - c_off[seg]


def _tensor(x: np.ndarray) -> Any:
    """Zero-copy torch view of ``x``; a read-only array (a memory-mapped embeddings.npy) is fine
    because the kernels never write to their input."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def _np(t: Any, dtype: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=dtype))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _match(res: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Injective matching of rows of ``res`` [b, d] to anchors [g, d] maximising total cosine
    -> [b] anchor indices."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(_unit(res) @ anchors.T, maximize=True)
    out = np.empty(len(res), dtype=np.int64)
    out[rows] = cols
    return out


@dataclass
class _Tree:
    """Fitted state shared by GAOQ and HKM (see module docstring)."""

    dim: int
    branching: tuple[int, ...]
    centroids: list[np.ndarray] = field(default_factory=list)  # level l: [P_l, d]
    sizes: list[np.ndarray] = field(default_factory=list)  # level l: [P_l] items per node
    node_codes: list[np.ndarray] = field(default_factory=list)  # level l: [P_l] code of node
    anchors: list[np.ndarray] = field(default_factory=list)  # aligned levels 2..L-1, then last
    last_size: int = 0
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # [N, L] SID table
    leaf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N] leaf node per SID
    prints: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # [N] row fingerprints


class GAOQ:
    """Globally aligned orthogonal quantizer. ``fit(z [N, d]) -> codes [N, L] int64``."""

    method = "gaoq"
    align = True

    def __init__(self, branching: tuple[int, ...] | None = None, anchors: tuple[int, ...] | None = None,
                 seed: int = 0, iters: int = 20, config: GAOQConfig | None = None, progress: bool = True,
                 anchor_basis: str = "random") -> None:
        self.config = config or GAOQConfig(branching=None if branching is None else tuple(branching),
                                           anchors=None if anchors is None else tuple(anchors), iters=iters, seed=seed,
                                           anchor_basis=anchor_basis)
        if self.config.branching is not None:
            check_branching(self.config.branching, None, f"{type(self).__name__}")
        if self.config.anchor_basis not in ("random", "pca"):
            raise ValueError(f"{type(self).__name__}: anchor_basis must be 'random' or 'pca', got {self.config.anchor_basis!r}")
        self.progress = progress
        self.tree: _Tree | None = None
        self.fit_info: dict[str, Any] = {}

    # ---- fitting ----------------------------------------------------------------------
    def fit(self, embeddings: Any) -> np.ndarray:
        """``embeddings``: [N, d] float -> unique SIDs [N, L] int64 (also kept in the state)."""
        fn = f"{type(self).__name__}.fit"
        z = validate_embeddings(embeddings, fn=fn)
        n, d = z.shape
        b = check_branching(self.config.branching or auto_branching(n), n, fn)
        g = self._anchor_counts(b)
        cfg = self.config
        tree = _Tree(dim=d, branching=b)
        info: dict[str, Any] = {"method": self.method, "branching": list(b), "anchors": [], "anchor_max_cos": []}

        clock = [time.perf_counter()]
        c1, node = _kmeans_root(z, b[0], cfg.iters, cfg.seed)
        tree.centroids.append(c1)
        tree.sizes.append(np.bincount(node, minlength=b[0]))
        tree.node_codes.append(np.arange(b[0], dtype=np.int64))
        for lvl in range(1, len(b)):
            clock.append(time.perf_counter())
            node = self._fit_level(tree, z, node, b[lvl], g[lvl - 1], cfg.seed + lvl, info)
        clock.append(time.perf_counter())
        self._fit_last(tree, z, node, cfg.seed + len(b), info)
        clock.append(time.perf_counter())
        info["level_seconds"] = [round(t1 - t0, 3) for t0, t1 in zip(clock, clock[1:])]
        tree.prints = fingerprint(z)
        self.tree = tree
        info["last_size"] = tree.last_size
        info["code_sizes"] = self.code_sizes()
        self.fit_info = info
        return tree.codes.copy()

    def _anchor_counts(self, b: tuple[int, ...]) -> tuple[int, ...]:
        if self.config.anchors is None:
            return tuple(b[1:])
        g = tuple(int(v) for v in self.config.anchors)
        if len(g) != len(b) - 1 or any(gi < bi for gi, bi in zip(g, b[1:])):
            raise ValueError(f"{type(self).__name__}: anchors must give g_l >= b_l for levels 2..{len(b)}, "
                             f"got anchors={list(g)} for branching={list(b)}")
        return g

    def _fit_level(self, tree: _Tree, z: np.ndarray, node: np.ndarray, b: int, g: int, seed: int,
                   info: dict[str, Any]) -> np.ndarray:
        parents = tree.centroids[-1]
        p = len(parents)
        order = np.argsort(node, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(node, minlength=p))]).astype(np.int64)
        cent, lab_sorted = _kmeans_segments(z[order], offsets, b, self.config.iters, seed)
        lab = np.empty_like(lab_sorted)
        lab[order] = lab_sorted
        child = node * b + lab
        sizes = np.bincount(child, minlength=p * b)
        # An empty child (parent with fewer than b items) sits on its parent: zero offset.
        cent = np.where((sizes > 0)[:, None], cent, np.repeat(parents, b, axis=0))
        t0 = time.perf_counter()
        if self.align:
            res = cent.reshape(p, b, -1) - parents[:, None, :]
            offs = res.reshape(p * b, -1)[sizes > 0]
            anchors = self._make_anchors(g, offs.shape, lambda: offs, seed, info)
            codes = np.stack([_match(res[i], anchors) for i in tqdm(
                range(p), desc=f"{self.method} level {len(tree.centroids) + 1} alignment", disable=not self.progress, leave=False)])
            tree.anchors.append(anchors)
            info["anchors"].append(g)
            info["anchor_max_cos"].append(max_coherence(anchors))
        else:
            codes = np.tile(np.arange(b, dtype=np.int64), p)
        info.setdefault("align_seconds", []).append(round(time.perf_counter() - t0, 3))
        tree.centroids.append(cent)
        tree.sizes.append(sizes)
        tree.node_codes.append(codes.reshape(-1))
        return child

    def _fit_last(self, tree: _Tree, z: np.ndarray, leaf: np.ndarray, seed: int, info: dict[str, Any]) -> None:
        n, d = z.shape
        counts = tree.sizes[-1]
        m = int(counts.max())
        if self.align and m > MAX_LAST_SIZE:
            # Aligning m items to m anchors costs O(m^2 d) per leaf: a prefix this crowded
            # means the branching is far too small for N, which also hurts the generator.
            raise ValueError(f"{type(self).__name__}.fit: the largest prefix holds {m} items, so the last level would "
                             f"need {m} > {MAX_LAST_SIZE} codes; use larger branching (auto gives ~15 per prefix)")
        tree.last_size = m
        order = np.argsort(leaf, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        last = np.empty(n, dtype=np.int64)
        if self.align:
            cent = tree.centroids[-1]
            # Each leaf's offsets from its centroid are formed in the loop: one [N, d] gather
            # and subtraction up front took 1.2 s, plus page faults on its fresh memory, at
            # 1M x 128 (the last level, with duplicate_rows: 6.0-6.3 -> 3.8-4.0 s replayed,
            # same SIDs). Only the pca basis reads them all at once.
            anchors = self._make_anchors(m, (n, d), lambda: z[order] - cent[leaf[order]], seed, info)
            tree.anchors.append(anchors)
            info["anchors"].append(m)
            info["anchor_max_cos"].append(max_coherence(anchors))
            for s in tqdm(range(len(counts)), desc=f"{self.method} last level", disable=not self.progress, leave=False):
                lo, hi = offsets[s], offsets[s + 1]
                if hi > lo:
                    rows = order[lo:hi]  # the items of leaf s
                    last[rows] = _match(z[rows] - cent[s], anchors)
        else:  # local indexing: rank inside the prefix, in row order
            rank = np.arange(n) - np.repeat(offsets[:-1], counts)
            last[order] = rank
        tree.codes = np.concatenate([self._prefix_codes(tree, leaf), last[:, None]], axis=1)
        tree.leaf = leaf.astype(np.int64)
        dup = duplicate_rows(tree.codes)
        if dup:  # cannot happen: leaves have distinct prefixes and in-leaf indices are injective
            raise RuntimeError(f"{type(self).__name__}: internal error, {dup} duplicate SIDs")

    def _make_anchors(self, g: int, shape: tuple[int, int], vectors: Callable[[], np.ndarray], seed: int,
                      info: dict[str, Any]) -> np.ndarray:
        """g anchors for one level; ``vectors()`` gives the [M, d] offsets being matched
        (``shape`` = (M, d)), called by the pca basis only."""
        basis = "pca" if self.config.anchor_basis == "pca" and g <= min(shape) else "random"
        info.setdefault("anchor_basis", []).append(basis)
        if basis == "pca":
            return pca_anchors(vectors(), g)
        return make_anchors(g, shape[1], seed, self.config.anchor_steps)

    @staticmethod
    def _prefix_codes(tree: _Tree, leaf: np.ndarray) -> np.ndarray:
        """Codes of levels 1..L-1 for items in leaf nodes ``leaf`` [M] -> [M, L-1]."""
        cols, node = [], leaf.astype(np.int64)
        for lvl in range(len(tree.branching) - 1, -1, -1):
            cols.append(tree.node_codes[lvl][node])
            if lvl:
                node = node // tree.branching[lvl]
        return np.stack(cols[::-1], axis=1)

    # ---- inspection -------------------------------------------------------------------
    def _require(self) -> _Tree:
        if self.tree is None:
            raise RuntimeError(f"{type(self).__name__}: not fitted; call fit() or load() first")
        return self.tree

    def code_sizes(self) -> list[int]:
        """Vocabulary size per level: [b1, g2, ..., g_{L-1}, last-level size]."""
        t = self._require()
        sizes = [t.branching[0]]
        for lvl in range(1, len(t.branching)):
            sizes.append(int(t.node_codes[lvl].max()) + 1 if not self.align else len(t.anchors[lvl - 1]))
        return sizes + [t.last_size]

    @property
    def codes(self) -> np.ndarray:
        """The SID table: fitted items first, then items given SIDs by ``assign``, [M, L]."""
        return self._require().codes

    def leaf_centroids(self) -> np.ndarray:
        """Centroid of each fitted item's deepest cluster, [N, d] (a reconstruction of z)."""
        t = self._require()
        return t.centroids[-1][t.leaf]

    # ---- assigning new items ----------------------------------------------------------
    def assign(self, embeddings: Any) -> np.ndarray:
        """SIDs for ``embeddings`` [M, d] without refitting -> [M, L] int64.

        A row whose float32 bytes equal an item already in the SID table (a fitted item, or one
        assigned before) gets that item's SID back. Any other row descends the fitted tree: at
        every level the nearest non-empty child centroid (plain nearest: no capacities), then a
        free last-level index in its leaf, the free anchor most aligned with the row's offset
        from the leaf centroid (HKM: the lowest free index). A full leaf (all ``last_size``
        indices taken; with balanced clusters most leaves are full) keeps the row in its leaf,
        so its prefix keeps its meaning, and gives it index ``last_size``, growing the last
        level by one (``code_sizes()[-1]``; a generator trained on the old vocabulary must be
        resized). New SIDs are added to the table, so they stay unique across calls.
        """
        t = self._require()
        x = validate_embeddings(embeddings, fn=f"{type(self).__name__}.assign", dim=t.dim)
        out = np.empty((len(x), len(t.branching) + 1), dtype=np.int64)
        prints = fingerprint(x)
        known = {int(h): i for i, h in enumerate(t.prints)}
        taken: dict[int, set[int]] = {}
        for lf, c in zip(t.leaf.tolist(), t.codes[:, -1].tolist()):
            taken.setdefault(lf, set()).add(c)
        leaf = self._descend(x)
        new_rows: list[int] = []
        for i in range(len(x)):
            hit = known.get(int(prints[i]))
            if hit is not None:  # same bytes as an item in the table (or earlier in this call)
                out[i] = t.codes[hit] if hit < len(t.codes) else out[new_rows[hit - len(t.codes)]]
                continue
            lf = int(leaf[i])
            used = taken.setdefault(lf, set())
            free = np.array([k for k in range(t.last_size) if k not in used], dtype=np.int64)
            if len(free) == 0:  # full leaf: the last level grows by one index (no anchor)
                c = t.last_size
                t.last_size += 1
            elif self.align and (aligned := free[free < len(t.anchors[-1])]).size:
                res = _unit(x[i] - t.centroids[-1][lf])
                c = int(aligned[np.argmax(t.anchors[-1][aligned] @ res)])
            else:
                c = int(free[0])
            used.add(c)
            out[i, :-1] = self._prefix_codes(t, np.array([lf]))[0]
            out[i, -1] = c
            known[int(prints[i])] = len(t.codes) + len(new_rows)
            new_rows.append(i)
        if new_rows:
            t.codes = np.concatenate([t.codes, out[new_rows]])
            t.leaf = np.concatenate([t.leaf, leaf[new_rows].astype(np.int64)])
            t.prints = np.concatenate([t.prints, prints[new_rows]])
        return out

    def _descend(self, x: np.ndarray) -> np.ndarray:
        """Nearest-centroid descent -> leaf node per row [M]."""
        t = self._require()
        node = _nearest(x, t.centroids[0], t.sizes[0] > 0)
        for lvl in range(1, len(t.branching)):
            b = t.branching[lvl]
            child = np.empty_like(node)
            order = np.argsort(node, kind="stable")
            bounds = np.flatnonzero(np.diff(node[order])) + 1
            for grp in np.split(order, bounds) if len(order) else []:
                p = int(node[grp[0]])  # rows in one parent: nearest of its b children
                kids = slice(p * b, (p + 1) * b)
                child[grp] = p * b + _nearest(x[grp], t.centroids[lvl][kids], t.sizes[lvl][kids] > 0)
            node = child
        return node

    # ---- persistence ------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted state to one ``.npz`` file (atomically)."""
        t = self._require()
        arrays: dict[str, np.ndarray] = {"codes": t.codes, "leaf": t.leaf, "prints": t.prints}
        for lvl in range(len(t.branching)):
            arrays[f"centroids_{lvl}"] = t.centroids[lvl]
            arrays[f"sizes_{lvl}"] = t.sizes[lvl]
            arrays[f"node_codes_{lvl}"] = t.node_codes[lvl]
        for i, a in enumerate(t.anchors):
            arrays[f"anchors_{i}"] = a
        meta = {"method": self.method, "dim": t.dim, "branching": list(t.branching), "last_size": t.last_size,
                "num_anchor_sets": len(t.anchors), "config": asdict(self.config), "fit_info": self.fit_info}
        save_state(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int | None = None) -> "GAOQ":
        """Read a state written by ``save``; ``dim`` (if given) must match the fitted dimension."""
        with np.load(path, allow_pickle=False) as f:
            meta = read_state_meta(f, path, cls.method, dim)
            cfg = meta["config"]
            q = cls(config=GAOQConfig(**{**cfg, "branching": tuple(cfg["branching"]) if cfg["branching"] else None,
                                         "anchors": tuple(cfg["anchors"]) if cfg["anchors"] else None}))
            b = tuple(meta["branching"])
            q.tree = _Tree(dim=int(meta["dim"]), branching=b, last_size=int(meta["last_size"]),
                           centroids=[f[f"centroids_{i}"] for i in range(len(b))],
                           sizes=[f[f"sizes_{i}"] for i in range(len(b))],
                           node_codes=[f[f"node_codes_{i}"] for i in range(len(b))],
                           anchors=[f[f"anchors_{i}"] for i in range(meta["num_anchor_sets"])],
                           codes=f["codes"], leaf=f["leaf"], prints=f["prints"])
            q.fit_info = meta.get("fit_info", {})
        return q


def save_state(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """A quantizer's fitted state as one ``.npz`` (arrays + JSON ``meta``), written atomically."""
    arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}

    def write(tmp: Any) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def read_state_meta(f: Any, path: str | os.PathLike[str], method: str, dim: int | None) -> dict[str, Any]:
    """The ``meta`` of an open state file ``f``, checked: written by ``method``, fitted on ``dim``."""
    meta = json.loads(f["meta"].tobytes().decode())
    if meta.get("method") != method:
        raise ValueError(f"{path}: state of a {meta.get('method')!r} quantizer, not {method!r}")
    if dim is not None and int(meta["dim"]) != int(dim):
        raise ValueError(f"{path}: quantizer was fitted on dim {meta['dim']}, embeddings have dim {dim}")
    return meta


def _nearest(x: np.ndarray, cent: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Index of the nearest valid centroid per row, chunked so memory stays O(chunk * K)."""
    out = np.empty(len(x), dtype=np.int64)
    cn = (cent.astype(np.float64) ** 2).sum(1)
    for lo in range(0, len(x), 65536):
        xs = x[lo:lo + 65536]
        d2 = cn[None, :] - 2.0 * (xs @ cent.T)
        d2[:, ~valid] = np.inf
        out[lo:lo + 65536] = np.argmin(d2, axis=1)
    return out
