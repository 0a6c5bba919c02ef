"""Baseline quantizers with GAOQ's interface (``fit(z [N, d]) -> codes [N, L]``, ``assign``,
``save``/``load``, ``code_sizes``), for the paper's Q-stage ablations:

- ``HKM``: hierarchical balanced k-means with *local* indexing (paper Table 2, Q2): the same tree
  as GAOQ (same kernels, same seeds, so the same partition), but a child's code is its index
  inside its parent's k-means, and the last level numbers items inside a prefix in row order.
- ``RQKMeans``: residual k-means (TIGER-style codes): level l clusters the residuals left by
  levels < l over *all* items into ``b_l`` codewords (balanced k-means, as in OneRec's RQ-Kmeans),
  then a dedup level numbers items that share the whole code (0 for a unique one).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from resid.gaoq import (GAOQ, GAOQConfig, _kmeans_root, _nearest, auto_branching, check_branching, fingerprint, read_state_meta,
                        save_state, validate_embeddings)


class HKM(GAOQ):
    """Hierarchical balanced k-means with local indexing (GAOQ without the global alignment)."""

    method = "hkm"
    align = False


class RQKMeans:
    """Residual k-means with a dedup level. ``fit(z [N, d]) -> codes [N, len(branching) + 1]``."""

    method = "rqkmeans"

    def __init__(self, branching: tuple[int, ...] | None = None, seed: int = 0, iters: int = 20,
                 config: GAOQConfig | None = None, progress: bool = True) -> None:
        self.config = config or GAOQConfig(branching=None if branching is None else tuple(branching), iters=iters, seed=seed)
        if self.config.branching is not None:
            check_branching(self.config.branching, None, "RQKMeans")
        self.progress = progress
        self.dim = 0
        self.codebooks: list[np.ndarray] = []  # level l: [b_l, d]
        self.codes_table = np.zeros((0, 0), np.int64)  # [N, L] SID table
        self.prints = np.zeros(0, np.uint64)
        self.fit_info: dict[str, Any] = {}

    def fit(self, embeddings: Any) -> np.ndarray:
        """``embeddings``: [N, d] float -> unique SIDs [N, L] int64."""
        z = validate_embeddings(embeddings, fn="RQKMeans.fit")
        n, d = z.shape
        b = check_branching(self.config.branching or auto_branching(n), n, "RQKMeans.fit")
        self.dim, self.codebooks = d, []
        res = z.copy()
        cols = []
        for lvl, k in enumerate(b):
            cent, lab = _kmeans_root(res, k, self.config.iters, self.config.seed + lvl)
            self.codebooks.append(cent)
            cols.append(lab)
            res -= cent[lab]
        prefix = np.stack(cols, axis=1)
        self.codes_table = np.concatenate([prefix, _dedup(prefix)[:, None]], axis=1)
        self.prints = fingerprint(z)
        self.fit_info = {"method": self.method, "branching": list(b), "last_size": self.code_sizes()[-1],
                         "code_sizes": self.code_sizes()}
        return self.codes_table.copy()

    @property
    def codes(self) -> np.ndarray:
        self._require()
        return self.codes_table

    def _require(self) -> None:
        if not self.codebooks:
            raise RuntimeError("RQKMeans: not fitted; call fit() or load() first")

    def code_sizes(self) -> list[int]:
        self._require()
        return [len(c) for c in self.codebooks] + [int(self.codes_table[:, -1].max()) + 1]

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the codewords of ``codes`` [M, L] (dedup level ignored) -> [M, d]."""
        self._require()
        return sum(cb[codes[:, lvl]] for lvl, cb in enumerate(self.codebooks))  # type: ignore[return-value]

    def assign(self, embeddings: Any) -> np.ndarray:
        """SIDs for new rows [M, d] -> [M, L]: a row with the bytes of one already in the table
        gets that SID; otherwise the nearest codeword per level on the residual, then the lowest
        dedup index free for that code (the dedup level grows when needed). Added to the table."""
        self._require()
        x = validate_embeddings(embeddings, fn="RQKMeans.assign", dim=self.dim)
        res = x.copy()
        cols = []
        for cb in self.codebooks:
            lab = _nearest(res, cb, np.ones(len(cb), dtype=bool))
            cols.append(lab)
            res -= cb[lab]
        prefix = np.stack(cols, axis=1)
        prints = fingerprint(x)
        known = {int(h): i for i, h in enumerate(self.prints)}
        used: dict[tuple[int, ...], set[int]] = {}
        for row in self.codes_table.tolist():
            used.setdefault(tuple(row[:-1]), set()).add(row[-1])
        out = np.empty((len(x), prefix.shape[1] + 1), dtype=np.int64)
        new_rows: list[int] = []
        for i in range(len(x)):
            hit = known.get(int(prints[i]))
            if hit is not None:
                out[i] = self.codes_table[hit] if hit < len(self.codes_table) else out[new_rows[hit - len(self.codes_table)]]
                continue
            u = used.setdefault(tuple(prefix[i].tolist()), set())
            c = next(k for k in range(len(u) + 1) if k not in u)
            u.add(c)
            out[i, :-1], out[i, -1] = prefix[i], c
            known[int(prints[i])] = len(self.codes_table) + len(new_rows)
            new_rows.append(i)
        if new_rows:
            self.codes_table = np.concatenate([self.codes_table, out[new_rows]])
            self.prints = np.concatenate([self.prints, prints[new_rows]])
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        self._require()
        arrays = {f"codebook_{i}": c for i, c in enumerate(self.codebooks)}
        arrays.update(codes=self.codes_table, prints=self.prints)
        meta = {"method": self.method, "dim": self.dim, "levels": len(self.codebooks),
                "config": {k: v for k, v in vars(self.config).items()}, "fit_info": self.fit_info}
        save_state(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int | None = None) -> "RQKMeans":
        with np.load(path, allow_pickle=False) as f:
            meta = read_state_meta(f, path, cls.method, dim)
            cfg = meta["config"]
            q = cls(config=GAOQConfig(**{**cfg, "branching": tuple(cfg["branching"]) if cfg["branching"] else None,
                                         "anchors": None}))
            q.dim = int(meta["dim"])
            q.codebooks = [f[f"codebook_{i}"] for i in range(meta["levels"])]
            q.codes_table, q.prints = f["codes"], f["prints"]
            q.fit_info = meta.get("fit_info", {})
        return q


def _dedup(prefix: np.ndarray) -> np.ndarray:
    """Rank of each row among rows with the same ``prefix`` [N, L'] (row order) -> [N]."""
    _, inv = np.unique(prefix, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    counts = np.bincount(inv)
    rank = np.empty(len(inv), dtype=np.int64)
    rank[order] = np.arange(len(inv)) - np.repeat(np.cumsum(counts) - counts, counts)
    return rank


QUANTIZERS: dict[str, type] = {"gaoq": GAOQ, "hkm": HKM, "rqkmeans": RQKMeans}


def make_quantizer(method: str, branching: tuple[int, ...] | None = None, seed: int = 0, iters: int = 20,
                   progress: bool = True, anchor_basis: str = "random") -> Any:
    """``method``: gaoq | hkm | rqkmeans -> an unfitted quantizer (``anchor_basis``: GAOQ only)."""
    if method not in QUANTIZERS:
        raise ValueError(f"method must be one of {sorted(QUANTIZERS)}, got {method!r}")
    if method == "gaoq":
        return GAOQ(branching=branching, seed=seed, iters=iters, progress=progress, anchor_basis=anchor_basis)
    return QUANTIZERS[method](branching=branching, seed=seed, iters=iters, progress=progress)


def load_quantizer(path: str | os.PathLike[str], dim: int | None = None) -> Any:
    """Load any saved quantizer state (the method is read from the file)."""
    with np.load(path, allow_pickle=False) as f:
        method = json.loads(f["meta"].tobytes().decode()).get("method")
    if method not in QUANTIZERS:
        raise ValueError(f"{path}: unknown quantizer method {method!r}")
    return QUANTIZERS[method].load(path, dim=dim)
