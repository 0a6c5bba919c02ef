"""Slow, obvious references for the kernels (the readable spec the tests compare against)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def sq_dists(x: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    """[N, K] squared Euclidean distances in float64."""
    xd, cd = x.double().cpu().numpy(), c.double().cpu().numpy()
    return ((xd[:, None, :] - cd[None, :, :]) ** 2).sum(-1)


def assignment_cost(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> float:
    """Total squared distance of each row of x to its labelled centroid (float64)."""
    diff = x.double().cpu() - c.double().cpu()[labels.cpu()]
    return float((diff * diff).sum())


def balanced_assign_exact(x: torch.Tensor, c: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Optimal capacitated assignment: Hungarian (scipy) on the cost matrix with centroid k
    repeated capacity[k] times (capped at N). x: [N, d], c: [K, d] -> labels [N] int64."""
    n = x.shape[0]
    cost = sq_dists(x, c)
    reps = np.minimum(capacity.cpu().numpy(), n)
    slot_cluster = np.repeat(np.arange(c.shape[0]), reps)
    rows, cols = linear_sum_assignment(cost[:, slot_cluster])
    labels = np.empty(n, dtype=np.int64)
    labels[rows] = slot_cluster[cols]
    return torch.from_numpy(labels)


def argmin_then_spill(x: torch.Tensor, c: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Naive baseline: points in index order take their nearest centroid with room left."""
    cost = sq_dists(x, c)
    room = capacity.cpu().numpy().copy()
    labels = np.empty(x.shape[0], dtype=np.int64)
    for i in range(x.shape[0]):
        for k in np.argsort(cost[i], kind="stable"):
            if room[k] > 0:
                room[k] -= 1
                labels[i] = k
                break
    return torch.from_numpy(labels)


def kmeanspp_indices(x: torch.Tensor, k: int, first: int, u: np.ndarray) -> list[int]:
    """k-means++ without shortcuts (float64): centre 0 is row `first`; centre t is the first row
    whose running sum of squared distances to the nearest centre exceeds u[t-1] * total, or,
    when every distance is 0, the floor(u[t-1] * free)-th row not yet chosen."""
    xd = x.double().cpu().numpy()
    idx = [first]
    d2 = ((xd - xd[first]) ** 2).sum(1)
    d2[first] = 0.0
    for t in range(1, k):
        total = float(np.cumsum(d2)[-1])
        if total > 0:
            nxt = int(np.searchsorted(np.cumsum(d2), u[t - 1] * total, side="right"))
        else:
            free = [i for i in range(len(xd)) if i not in idx]
            nxt = free[min(int(u[t - 1] * len(free)), len(free) - 1)]
        idx.append(nxt)
        d2 = np.minimum(d2, ((xd - xd[nxt]) ** 2).sum(1))
        d2[nxt] = 0.0
    return idx
