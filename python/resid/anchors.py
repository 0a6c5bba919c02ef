"""Shared reference directions ("anchors") for GAOQ's global index alignment (paper Alg. 1, Ortho).

``make_anchors(g, d, seed)`` returns ``[g, d]`` float32 unit rows:
- ``g <= d``: the Q factor of a seeded Gaussian ``[d, g]`` (exactly orthonormal up to round-off);
- ``g > d``: ``g`` unit vectors cannot be orthogonal, so we minimise a smooth stand-in for the
  largest pairwise |cosine| (the p-norm of the off-diagonal Gram entries, p raised over the run),
  starting from seeded Gaussian directions. The Welch bound sqrt((g-d)/(d(g-1))) is the floor.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def welch_bound(g: int, d: int) -> float:
    """Lowest possible max |cos| among ``g`` unit vectors in ``d`` dims (0 when g <= d)."""
    return 0.0 if g <= d else math.sqrt((g - d) / (d * (g - 1)))


def max_coherence(anchors: np.ndarray) -> float:
    """Largest |cosine| between two different rows of ``anchors`` [g, d]."""
    a = np.asarray(anchors, dtype=np.float64)
    if len(a) < 2:
        return 0.0
    u = a / np.linalg.norm(a, axis=1, keepdims=True)
    gram = np.abs(u @ u.T)
    np.fill_diagonal(gram, 0.0)
    return float(gram.max())


def make_anchors(g: int, d: int, seed: int, steps: int = 300) -> np.ndarray:
    """``g`` approximately orthonormal anchors in ``d`` dims -> [g, d] float32, unit rows."""
    if g < 1 or d < 1:
        raise ValueError(f"make_anchors: need g >= 1 and d >= 1, got g={g}, d={d}")
    import torch  # seeded draws shared with resid.kmeans; imported lazily to keep `import resid` light

    gen = torch.Generator().manual_seed(int(seed))
    if g <= d:
        q, r = torch.linalg.qr(torch.randn(d, g, generator=gen, dtype=torch.float64))
        # Fix the sign ambiguity of QR so the result depends only on the seed.
        q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
        return q.T.contiguous().to(torch.float32).numpy()
    return _low_coherence(g, d, gen, steps)


def pca_anchors(vectors: np.ndarray, g: int) -> np.ndarray:
    """The top-``g`` principal directions of ``vectors`` [M, d] (uncentred: directions away
    from the origin, i.e. from the parent), as orthonormal rows [g, d] float32; each row's sign
    is fixed so its largest-magnitude entry is positive. Needs g <= min(M, d)."""
    v = np.asarray(vectors, dtype=np.float64)
    if not 1 <= g <= min(v.shape):
        raise ValueError(f"pca_anchors: need 1 <= g <= min(M, d) = {min(v.shape)}, got g={g}")
    _, vecs = np.linalg.eigh(v.T @ v)  # ascending eigenvalues; [d, d] so O(M d^2) overall
    top = vecs[:, ::-1][:, :g].T
    sign = np.sign(top[np.arange(g), np.argmax(np.abs(top), axis=1)])
    return (top * sign[:, None]).astype(np.float32)


def _low_coherence(g: int, d: int, gen: Any, steps: int) -> np.ndarray:
    # Projected gradient descent on the sphere, in numpy (tiny matrices: torch's thread pool
    # only adds overhead here). Gradient of sum_{i!=j} |c_ij|^p w.r.t. u_i is p * sum_j
    # |c_ij|^(p-2) c_ij u_j; entries are scaled by the current max so large p cannot overflow.
    import torch

    u = torch.randn(g, d, generator=gen, dtype=torch.float64).numpy()
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    best, best_u = math.inf, u.copy()
    for t in range(steps):
        c = u @ u.T
        np.fill_diagonal(c, 0.0)
        m = float(np.abs(c).max())
        if m < best:
            best, best_u = m, u.copy()
        p = 4.0 + 28.0 * t / max(1, steps - 1)  # mean cos^2-like first, then ever closer to the max
        grad = ((np.abs(c) / m) ** (p - 2) * c) @ u
        grad -= (grad * u).sum(1, keepdims=True) * u  # tangent to the sphere
        grad /= max(float(np.linalg.norm(grad, axis=1).max()), 1e-12)
        u = u - (0.05 * (1.0 - t / steps) + 0.002) * grad
        u /= np.linalg.norm(u, axis=1, keepdims=True)
    return best_u.astype(np.float32)
