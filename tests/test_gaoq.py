"""GAOQ: unique SIDs, balance, global alignment, anchors, determinism, persistence, assign, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from resid.anchors import make_anchors, max_coherence, pca_anchors, welch_bound
from resid.gaoq import GAOQ, auto_branching, fingerprint
from resid.io import duplicate_rows

# Inputs here are tiny: torch's thread pool only adds overhead (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(n: int = 403, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _shifted_directions(p: int = 4, b: int = 5, per: int = 6, d: int = 24, seed: int = 0):
    """Parents far apart; under every parent the same b child directions (a random orthonormal
    set, so no direction sits exactly on an anchor), each child a tight clump of ``per`` items.
    Returns (z [p*b*per, d], parent [N], direction [N])."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(p, d)) * 60.0
    dirs = np.linalg.qr(rng.normal(size=(d, b)))[0].T * 6.0  # [b, d]
    rows, parent, direction = [], [], []
    for i in range(p):
        for j in range(b):
            rows.append(centers[i] + dirs[j] + rng.normal(size=(per, d)) * 0.05)
            parent += [i] * per
            direction += [j] * per
    return np.concatenate(rows).astype(np.float32), np.array(parent), np.array(direction)


def _unique_rows(codes: np.ndarray) -> int:
    return len(np.unique(codes, axis=0))


@pytest.mark.parametrize("branching", [(4, 3), (5,), (3, 2, 2)])
def test_every_item_gets_a_unique_sid(branching):
    z = _random()
    q = GAOQ(branching=branching, seed=0, progress=False)
    codes = q.fit(z)
    assert codes.shape == (len(z), len(branching) + 1)
    assert codes.dtype == np.int64
    assert _unique_rows(codes) == len(z)
    sizes = q.code_sizes()
    assert all((codes[:, lvl] >= 0).all() and (codes[:, lvl] < sizes[lvl]).all() for lvl in range(codes.shape[1]))
    # Last level is sized by the most populated prefix and that size is reported.
    _, counts = np.unique(codes[:, :-1], axis=0, return_counts=True)
    assert q.fit_info["last_size"] == sizes[-1] == counts.max()


def test_balanced_sizes_per_parent():
    z = _random(n=403)
    q = GAOQ(branching=(4, 3), seed=1, progress=False)
    q.fit(z)
    t = q.tree
    assert t.sizes[0].max() - t.sizes[0].min() <= 1
    for parent in range(4):  # every parent has ~100 >= 3 items, so its children differ by <= 1
        kids = t.sizes[1][parent * 3:(parent + 1) * 3]
        assert kids.sum() == t.sizes[0][parent]
        assert kids.max() - kids.min() <= 1


def test_alignment_same_direction_same_code_under_every_parent():
    z, parent, direction = _shifted_directions()
    for anchors in (None, (9,)):  # g = b, and g > b
        q = GAOQ(branching=(4, 5), anchors=anchors, seed=3, progress=False)
        codes = q.fit(z)
        # Level 1 recovers the parents, level 2 the directions ...
        assert len(np.unique(np.stack([parent, codes[:, 0]]), axis=1).T) == 4
        # ... and a direction's level-2 code is the same under every parent, distinct directions differ.
        code_of_dir = [np.unique(codes[direction == j, 1]) for j in range(5)]
        assert all(len(c) == 1 for c in code_of_dir), code_of_dir
        assert len({int(c[0]) for c in code_of_dir}) == 5


def test_hkm_local_indexing_is_not_aligned_on_the_same_data():
    """The control for the test above: local indices need not agree across parents."""
    from resid.quantizers import HKM

    z, _, direction = _shifted_directions()
    codes = HKM(branching=(4, 5), seed=3, progress=False).fit(z)
    per_dir = [len(np.unique(codes[direction == j, 1])) for j in range(5)]
    assert max(per_dir) > 1, "local k-means indices happened to agree under every parent"


def test_anchors_orthonormal_when_g_le_dim_and_low_coherence_otherwise():
    a = make_anchors(16, 32, seed=5)
    assert a.shape == (16, 32)
    np.testing.assert_allclose(a @ a.T, np.eye(16), atol=1e-5)
    assert np.array_equal(a, make_anchors(16, 32, seed=5))
    g, d = 48, 8
    opt = make_anchors(g, d, seed=5)
    np.testing.assert_allclose(np.linalg.norm(opt, axis=1), 1.0, atol=1e-5)
    raw = np.random.default_rng(5).normal(size=(g, d))
    assert welch_bound(g, d) <= max_coherence(opt) < 0.8 * max_coherence(raw)


def test_gaoq_anchor_coherence_reported():
    q = GAOQ(branching=(3, 2), seed=0, progress=False)
    q.fit(_random(n=60, d=32))
    assert q.fit_info["anchors"] == [2, 10]
    assert max(q.fit_info["anchor_max_cos"]) < 1e-5


def test_determinism():
    z = _random(seed=4)
    a = GAOQ(branching=(4, 3), seed=7, progress=False).fit(z)
    b = GAOQ(branching=(4, 3), seed=7, progress=False).fit(z)
    assert np.array_equal(a, b)


def test_save_load_round_trip(tmp_path):
    z = _random(seed=2)
    q = GAOQ(branching=(4, 3), seed=0, progress=False)
    codes = q.fit(z)
    q.save(tmp_path / "q.npz")
    r = GAOQ.load(tmp_path / "q.npz", dim=z.shape[1])
    assert np.array_equal(r.codes, codes)
    assert r.code_sizes() == q.code_sizes()
    new = _random(n=30, seed=9)
    assert np.array_equal(q.assign(new), r.assign(new))
    with pytest.raises(ValueError, match="fitted on dim 32, embeddings have dim 16"):
        GAOQ.load(tmp_path / "q.npz", dim=16)
    from resid.quantizers import HKM

    with pytest.raises(ValueError, match="'gaoq' quantizer, not 'hkm'"):
        HKM.load(tmp_path / "q.npz")


def test_assign_reproduces_training_sids_and_keeps_new_ones_unique():
    z = _random(n=200, d=16, seed=6)
    q = GAOQ(branching=(4, 2), seed=0, progress=False)
    codes = q.fit(z)
    assert np.array_equal(q.assign(z), codes)
    assert len(q.codes) == len(z)  # nothing new was added
    new = z[:40] + 1e-3  # other bytes: these descend the tree
    got = q.assign(new)
    assert _unique_rows(np.concatenate([codes, got])) == len(z) + 40
    assert np.array_equal(q.assign(new), got)  # already in the table now
    # 200 items in 8 leaves: every leaf is full (25 = last_size), so newcomers extend the last
    # level, which ends as long as the leaf that got the most newcomers needs.
    assert np.bincount(q.tree.leaf[:200]).tolist() == [25] * 8
    assert q.code_sizes()[-1] == 25 + np.bincount(q.tree.leaf[200:]).max()
    assert (got[:, -1] >= 25).all()


def test_assign_descends_to_the_training_prefix():
    """On clusters the balanced k-means recovers exactly, a nearby new point gets its
    neighbour's prefix, and a free last-level index in that leaf."""
    z, _, _ = _shifted_directions(per=6)
    q = GAOQ(branching=(4, 5), seed=3, progress=False)
    codes = q.fit(z[::2])  # fit on half of every clump (rows 2i and 2i+1 share a clump) ...
    new = z[1::2]  # ... and assign the other half
    got = q.assign(new)
    assert np.array_equal(got[:, :2], codes[:, :2])
    assert _unique_rows(np.concatenate([codes, got])) == len(z)


def test_assign_uses_free_aligned_index_in_a_leaf_with_room():
    z = _random(n=203, d=16, seed=8)  # 203 items over 4*2 leaves: some leaves hold 25, some 26
    q = GAOQ(branching=(4, 2), seed=0, progress=False)
    codes = q.fit(z)
    last = q.code_sizes()[-1]
    leaf_fill = np.bincount(q.tree.leaf)
    roomy = int(np.argmin(leaf_fill))
    assert leaf_fill[roomy] < last
    item = int(np.nonzero(q.tree.leaf == roomy)[0][0])
    got = q.assign(z[item:item + 1] * (1 + 1e-6))
    assert got[0, -1] < last  # no growth: a free index was used
    assert not (codes == got[0]).all(axis=1).any()


def test_auto_branching():
    b1, b2 = auto_branching(1_000_000)
    assert 10 <= 1_000_000 / (b1 * b2) <= 20
    q = GAOQ(seed=0, progress=False)
    codes = q.fit(_random(n=600, d=8))
    assert q.fit_info["branching"] == [6, 6] and codes.shape[1] == 3


def test_fingerprint_distinguishes_rows():
    z = _random(n=100, d=8)
    h = fingerprint(z)
    assert len(np.unique(h)) == 100
    assert np.array_equal(h, fingerprint(z.copy()))


def test_bad_input():
    z = _random(n=50, d=8)
    bad = z.copy()
    bad[[3, 17]] = np.nan
    with pytest.raises(ValueError, match="2 rows with NaN/inf values: rows 3, 17"):
        GAOQ(branching=(4,), progress=False).fit(bad)
    with pytest.raises(ValueError, match="50 items is fewer than the first branching factor b1=64"):
        GAOQ(branching=(64,), progress=False).fit(z)
    with pytest.raises(ValueError, match="must be >= 2"):
        GAOQ(branching=(4, 1))
    with pytest.raises(ValueError, match="2-D"):
        GAOQ(branching=(4,), progress=False).fit(z[0])
    with pytest.raises(ValueError, match="g_l >= b_l"):
        GAOQ(branching=(4, 3), anchors=(2,), progress=False).fit(z)
    q = GAOQ(branching=(4,), progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        q.assign(z)
    q.fit(z)
    with pytest.raises(ValueError, match="dim 4 but the quantizer was fitted on dim 8"):
        q.assign(z[:, :4])


def test_crowded_prefix_is_refused(monkeypatch):
    import resid.gaoq as gaoq_mod

    monkeypatch.setattr(gaoq_mod, "MAX_LAST_SIZE", 10)
    with pytest.raises(ValueError, match="largest prefix holds 25 items"):
        GAOQ(branching=(2,), progress=False).fit(_random(n=50, d=8))


def test_parent_smaller_than_branching_gets_one_child_per_item():
    z = _random(n=10, d=16, seed=11)
    q = GAOQ(branching=(2, 8), seed=0, progress=False)
    codes = q.fit(z)  # each parent holds 5 < 8 items
    assert _unique_rows(codes) == 10
    kids = q.tree.sizes[1].reshape(2, 8)
    assert (np.sort(kids, axis=1)[:, ::-1][:, :5] == 1).all() and kids.sum() == 10
    assert np.isfinite(q.tree.centroids[1]).all()
    assert q.code_sizes()[-1] == 1
    # New points never descend into an empty child: their prefix is a fitted one.
    got = q.assign(_random(n=20, d=16, seed=12))
    fitted = {tuple(r) for r in codes[:, :2].tolist()}
    assert all(tuple(r) in fitted for r in got[:, :2].tolist())


def test_pca_anchors_are_the_principal_directions():
    from resid.anchors import pca_anchors

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(12, 3)))[0].T  # 3 orthonormal directions in 12-D
    v = (rng.normal(size=(200, 3)) * [5.0, 2.0, 0.5]) @ basis
    a = pca_anchors(v, 3)
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(np.abs(a @ basis.T), np.eye(3), atol=0.05)  # same axes, in variance order
    with pytest.raises(ValueError, match="g <= min"):
        pca_anchors(v, 13)


def test_pca_anchor_basis_aligns_and_falls_back_where_rank_is_short():
    z, _, direction = _shifted_directions()
    q = GAOQ(branching=(4, 5), seed=3, progress=False, anchor_basis="pca")
    codes = q.fit(z)
    code_of_dir = [np.unique(codes[direction == j, 1]) for j in range(5)]
    assert all(len(c) == 1 for c in code_of_dir) and len({int(c[0]) for c in code_of_dir}) == 5
    assert q.fit_info["anchor_basis"] == ["pca", "pca"]
    assert _unique_rows(codes) == len(z)
    wide = GAOQ(branching=(3, 2), seed=0, progress=False, anchor_basis="pca")
    wide.fit(_random(n=60, d=4))  # last level: 10 anchors > d = 4 -> random (optimised) set
    assert wide.fit_info["anchor_basis"] == ["pca", "random"]
    with pytest.raises(ValueError, match="anchor_basis must be"):
        GAOQ(branching=(3,), anchor_basis="svd")


@pytest.mark.parametrize("seed", range(4))
def test_duplicate_rows_counts_like_a_row_wise_unique(seed):
    rng = np.random.default_rng(seed)
    n, levels = int(rng.integers(1, 400)), int(rng.integers(1, 5))
    codes = rng.integers(-3, 6, size=(n, levels))  # small ranges: many repeats, negatives too
    assert duplicate_rows(codes) == n - len(np.unique(codes, axis=0))
    wide = rng.integers(0, 2**40, size=(n, 3))  # key space past 2^62: the row-wise fallback
    wide[n // 2:] = wide[: n - n // 2]
    assert duplicate_rows(wide) == n - len(np.unique(wide, axis=0))
    assert duplicate_rows(np.unique(codes, axis=0)) == 0


def test_pca_anchor_basis_reads_the_last_level_offsets():
    """The last level hands its offsets to the pca basis lazily; the basis must still see them."""
    z = np.random.default_rng(5).standard_normal((600, 64)).astype(np.float32)  # last level ~40 <= d
    q = GAOQ(branching=(4, 4), iters=3, seed=0, anchor_basis="pca", progress=False)
    codes = q.fit(z)
    assert q.fit_info["anchor_basis"][-1] == "pca"
    assert len(np.unique(codes, axis=0)) == len(z)
    t = q.tree
    offsets = z - t.centroids[-1][t.leaf]  # every item's offset from its leaf centroid
    np.testing.assert_allclose(t.anchors[-1], pca_anchors(offsets, t.last_size), atol=1e-4)
