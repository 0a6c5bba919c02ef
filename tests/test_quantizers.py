"""Baselines: HKM (local indexing) and RQ-KMeans (residual codes + dedup level)."""
from __future__ import annotations

import numpy as np
import pytest

from resid.gaoq import GAOQ
from resid.quantizers import HKM, RQKMeans, _dedup, load_quantizer, make_quantizer

# Inputs here are tiny: torch's thread pool only adds overhead (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(n: int = 301, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_hkm_same_partition_as_gaoq_local_codes():
    z = _random()
    g = GAOQ(branching=(4, 3), seed=2, progress=False)
    h = HKM(branching=(4, 3), seed=2, progress=False)
    cg, ch = g.fit(z), h.fit(z)
    assert len(np.unique(ch, axis=0)) == len(z)
    # Same kernels and seeds: identical tree, only the child codes differ (a relabelling).
    assert np.array_equal(g.tree.leaf, h.tree.leaf)
    assert np.array_equal(cg[:, 0], ch[:, 0])
    assert np.array_equal(ch[:, 1], h.tree.leaf % 3)  # local index = k-means child index
    # Last level: rank of the item inside its prefix, in row order.
    for leaf in range(12):
        rows = np.nonzero(h.tree.leaf == leaf)[0]
        assert ch[rows, 2].tolist() == list(range(len(rows)))
    assert h.code_sizes() == [4, 3, int(np.bincount(h.tree.leaf).max())]


def test_rqkmeans_codes_are_residual_nearest_and_unique():
    z = _random(n=256)
    q = RQKMeans(branching=(4, 4), seed=0, progress=False)
    codes = q.fit(z)
    assert codes.shape == (256, 3)
    assert len(np.unique(codes, axis=0)) == 256
    # Level-1 codebook is the mean of its (balanced) cluster, the level-2 one of its residuals.
    for k in range(4):
        np.testing.assert_allclose(q.codebooks[0][k], z[codes[:, 0] == k].mean(0), atol=1e-4)
    res = z - q.codebooks[0][codes[:, 0]]
    for k in range(4):
        np.testing.assert_allclose(q.codebooks[1][k], res[codes[:, 1] == k].mean(0), atol=1e-4)
    # Dedup level: 0..n-1 among items sharing (c1, c2); its size is the largest group.
    _, counts = np.unique(codes[:, :2], axis=0, return_counts=True)
    assert q.code_sizes() == [4, 4, counts.max()]
    recon = q.reconstruct(codes)
    assert ((z - recon) ** 2).sum() < ((z - z.mean(0)) ** 2).sum()


def test_dedup_ranks_within_groups():
    prefix = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    assert _dedup(prefix).tolist() == [0, 0, 1, 2, 0]


def test_rqkmeans_assign_and_round_trip(tmp_path):
    z = _random(n=200, seed=3)
    q = RQKMeans(branching=(4, 4), seed=0, progress=False)
    codes = q.fit(z)
    assert np.array_equal(q.assign(z), codes)
    q.save(tmp_path / "rq.npz")
    r = load_quantizer(tmp_path / "rq.npz", dim=16)
    assert isinstance(r, RQKMeans) and np.array_equal(r.codes, codes)
    new = z[:20] + 1e-3
    got = q.assign(new)
    assert np.array_equal(got, r.assign(new))
    # New rows: the nearest codeword per level on the residual (training rows got balanced
    # codes, which need not be their nearest codewords).
    res, want = new.astype(np.float64), []
    for cb in q.codebooks:
        c = ((res[:, None, :] - cb[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
        want.append(c)
        res = res - cb[c]
    assert np.array_equal(got[:, :2], np.stack(want, 1))
    assert len(np.unique(np.concatenate([codes, got]), axis=0)) == 220
    with pytest.raises(ValueError, match="fitted on dim 16"):
        load_quantizer(tmp_path / "rq.npz", dim=8)


def test_hkm_round_trip_and_factory(tmp_path):
    z = _random(n=120)
    q = make_quantizer("hkm", (3, 2), progress=False)
    codes = q.fit(z)
    q.save(tmp_path / "h.npz")
    r = load_quantizer(tmp_path / "h.npz")
    assert isinstance(r, HKM) and np.array_equal(r.codes, codes)
    assert np.array_equal(r.assign(z), codes)
    with pytest.raises(ValueError, match="method must be one of"):
        make_quantizer("vq", (3,))


def test_baselines_bad_input():
    z = _random(n=10)
    with pytest.raises(ValueError, match="fewer than the first branching factor"):
        RQKMeans(branching=(16,), progress=False).fit(z)
    with pytest.raises(ValueError, match=">= 2"):
        RQKMeans(branching=(1,))
    z[4, 2] = np.inf
    with pytest.raises(ValueError, match="rows 4"):
        HKM(branching=(2,), progress=False).fit(z)
