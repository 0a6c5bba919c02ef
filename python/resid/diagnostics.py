"""Judging a quantizer before training a generator (paper Sec. 3.3, Tables 9 and 10).

Every figure is computed from the codes and the embeddings alone, so GAOQ, HKM and RQ-KMeans
are measured the same way. Per level l (entropies in bits):

- ``used`` / ``utilisation``: distinct codes at level l, and that over the level's vocabulary;
- ``entropy`` H(c_l) beside ``max_entropy`` log2(vocab_l);
- ``cond_entropy`` H(c_l | C_<l) = H(C_<=l) - H(C_<l), from prefix counts;
- ``recon_rel_mse``: E||z - mean(z | C_<=l)||^2 / E||z - mean(z)||^2, how much of the variance the
  first l codes leave unexplained (the empirical reconstruction of z from its codes);
- ``within_code_cos``: mean pairwise cosine of centred vectors z - mean(z | C_<l) among items
  sharing c_l (across all prefixes), averaged over codes with >= 2 items (Table 10; higher means
  one code is one direction under every prefix, i.e. less ambiguity);
- ``overlap``: share of history items whose level-l code equals the target's (Table 9), on the
  leave-one-out test split of a prepared dataset.
Plus ``collisions`` (items whose full SID is shared with an earlier item) and a PNG.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from resid.io import atomic_write


def _group_ids(codes: np.ndarray, upto: int) -> np.ndarray:
    """Dense id of each row's prefix C_<upto (``upto`` = 0 -> all rows in one group) -> [N]."""
    if upto == 0:
        return np.zeros(len(codes), dtype=np.int64)
    _, inv = np.unique(codes[:, :upto], axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def _entropy(groups: np.ndarray) -> float:
    p = np.bincount(groups) / len(groups)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _group_mean(z: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of z over each group, gathered back per row -> [N, d] float64."""
    k = int(groups.max()) + 1
    sums = np.zeros((k, z.shape[1]))
    np.add.at(sums, groups, z)
    return (sums / np.bincount(groups, minlength=k)[:, None])[groups]


def within_code_cosine(centred: np.ndarray, code: np.ndarray) -> float:
    """Mean over codes (with >= 2 items) of the mean pairwise cosine of rows of ``centred``
    [N, d] sharing ``code`` [N]: (||sum u||^2 - n) / (n (n - 1)) with u the unit rows."""
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    u = np.where(norm > 1e-12, centred / np.maximum(norm, 1e-12), 0.0)
    k = int(code.max()) + 1
    s = np.zeros((k, u.shape[1]))
    np.add.at(s, code, u)
    nz = np.bincount(code, weights=(norm[:, 0] > 1e-12).astype(np.float64), minlength=k)
    ok = nz >= 2
    if not ok.any():
        return float("nan")
    pair = ((s[ok] ** 2).sum(1) - nz[ok]) / (nz[ok] * (nz[ok] - 1))
    return float(pair.mean())


def history_target_overlap(codes: np.ndarray, histories: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per level: matched history items / all history items, where a history item matches when
    its level-l code equals the target's. ``histories`` [U, T] rows (-1 = pad), ``targets`` [U]."""
    valid = histories >= 0
    h = codes[np.where(valid, histories, 0)]  # [U, T, L]
    t = codes[targets][:, None, :]  # [U, 1, L]
    match = (h == t) & valid[:, :, None]
    total = valid.sum()
    return [float(match[:, :, lvl].sum() / max(total, 1)) for lvl in range(codes.shape[1])]


def quantizer_report(codes: np.ndarray, embeddings: np.ndarray, code_sizes: list[int] | None = None,
                     histories: np.ndarray | None = None, targets: np.ndarray | None = None) -> dict[str, Any]:
    """All diagnostics for ``codes`` [N, L] int64 of ``embeddings`` [N, d]; ``histories``/``targets``
    (rows into codes) add the overlap. Returns a JSON-ready dict."""
    codes = np.asarray(codes, dtype=np.int64)
    z = np.asarray(embeddings, dtype=np.float64)
    n, levels = codes.shape
    sizes = code_sizes or [int(codes[:, lvl].max()) + 1 for lvl in range(levels)]
    total_var = float(((z - z.mean(0)) ** 2).sum(1).mean())
    full = _group_ids(codes, levels)
    report: dict[str, Any] = {"num_items": n, "levels": levels, "code_sizes": list(sizes),
                              "collisions": int(n - (full.max() + 1)),
                              "max_prefix_size": int(np.bincount(_group_ids(codes, levels - 1)).max()), "per_level": []}
    prev = _group_ids(codes, 0)
    h_prev = 0.0
    for lvl in range(levels):
        upto = _group_ids(codes, lvl + 1)
        h_upto = _entropy(upto)
        centred = z - _group_mean(z, prev)
        recon = z - _group_mean(z, upto)
        used = int(len(np.unique(codes[:, lvl])))
        report["per_level"].append({
            "level": lvl + 1,
            "vocab": int(sizes[lvl]),
            "used": used,
            "utilisation": used / sizes[lvl],
            "entropy": _entropy(codes[:, lvl]),
            "max_entropy": float(np.log2(sizes[lvl])),
            "cond_entropy": h_upto - h_prev,
            "recon_rel_mse": float((recon ** 2).sum(1).mean() / total_var) if total_var > 0 else 0.0,
            "within_code_cos": within_code_cosine(centred, codes[:, lvl]),
        })
        prev, h_prev = upto, h_upto
    if histories is not None and targets is not None:
        for row, ov in zip(report["per_level"], history_target_overlap(codes, histories, targets)):
            row["overlap"] = ov
    return report


def plot_report(codes: np.ndarray, report: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """PNG: per level, code usage (items per code, codes sorted by use) with H(c_l), log2(vocab)
    and H(c_l | C_<l) in the panel title. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = codes.shape[1]
    fig, axes = plt.subplots(1, levels, figsize=(4.2 * levels, 3.4), squeeze=False)
    for lvl, ax in enumerate(axes[0]):
        row = report["per_level"][lvl]
        counts = np.sort(np.bincount(codes[:, lvl], minlength=row["vocab"]))[::-1]
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="#3b6ea8")
        ax.axhline(len(codes) / row["vocab"], color="#c44", lw=0.8, ls="--", label="uniform")
        ax.set_title(f"level {lvl + 1}: H={row['entropy']:.2f} / log2 {row['vocab']}={row['max_entropy']:.2f}\n"
                     f"H(c|prefix)={row['cond_entropy']:.2f}, used {row['used']}/{row['vocab']}", fontsize=9)
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("items")
        ax.legend(fontsize=7)
    fig.suptitle(title or "code usage per level", fontsize=10)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=90)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
