"""Top-K ranking metrics under leave-one-out (one held-out target per user).

Recall@K = 1 if the target is among the top K, else 0 (averaged over users).
NDCG@K   = 1 / log2(rank + 2) for a 0-based rank < K, else 0 (one relevant item, so IDCG = 1).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target under full ranking. Ties count against the target
    (items with an equal score rank ahead of it), so a constant scorer earns nothing.

    scores: [B, N] float; targets: [B] int64 item rows. Returns [B] int64."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores >= target_scores).sum(dim=1) - 1


def ranks_from_topk(topk: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> np.ndarray:
    """0-based rank of each target in a top-K list ([B, K] item rows, -1 padded);
    K (i.e. "not found") when absent. Returns [B] int64."""
    topk = np.asarray(topk)
    targets = np.asarray(targets).reshape(-1, 1)
    hit = topk == targets
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1), topk.shape[1]).astype(np.int64)


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """{"recall@k": ..., "ndcg@k": ...} averaged over users, from 0-based target ranks."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.int64)
    if r.size == 0:
        raise ValueError("metrics_from_ranks: no users to evaluate")
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"recall@{k}"] = float(hit.mean())
        gains = np.where(hit, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0)
        out[f"ndcg@{k}"] = float(gains.mean())
    return out


def ndcg_single(rank: int, k: int) -> float:
    """NDCG@k of one user whose target sits at 0-based ``rank``."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
