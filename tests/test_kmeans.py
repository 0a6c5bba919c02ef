"""resid.kmeans: balance, determinism, quality and edge cases of balanced (segmented) k-means."""
from __future__ import annotations

import pytest
import torch
from reference import assignment_cost, kmeanspp_indices

from resid.kmeans import balanced_kmeans, balanced_kmeans_segmented
from resid_ext import default_capacity


def _blobs(sizes: list[int], d: int, seed: int, spread: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(len(sizes), d, generator=g) * spread
    truth = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    x = means[truth] + torch.randn(len(truth), d, generator=g)
    return x.float(), truth


def test_sizes_are_exactly_balanced_and_labels_in_range():
    x, _ = _blobs([300, 60, 20, 20], 8, seed=1)  # skewed: plain k-means would not balance
    cent, labels = balanced_kmeans(x, 10, iters=5, seed=0)
    assert cent.shape == (10, 8) and labels.shape == (400,) and labels.dtype == torch.int64
    assert torch.equal(torch.bincount(labels, minlength=10), default_capacity(400, 10))


def test_recovers_equal_sized_well_separated_blobs():
    x, truth = _blobs([50, 50, 50, 50], 6, seed=2)
    _, labels = balanced_kmeans(x, 4, iters=10, seed=3)
    # Same partition up to renaming: each true blob maps to exactly one cluster.
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 4


def test_lloyd_iterations_lower_the_cost():
    x, _ = _blobs([200, 80, 40], 5, seed=4, spread=3.0)
    c0, l0 = balanced_kmeans(x, 12, iters=0, seed=5)
    c1, l1 = balanced_kmeans(x, 12, iters=8, seed=5)
    assert assignment_cost(x, c1, l1) < assignment_cost(x, c0, l0)


def test_deterministic_per_seed():
    x, _ = _blobs([100, 40], 4, seed=6)
    a = balanced_kmeans(x, 7, iters=4, seed=11)
    b = balanced_kmeans(x, 7, iters=4, seed=11)
    c = balanced_kmeans(x, 7, iters=4, seed=12)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.centroids, c.centroids)


def test_edge_cases_k1_k_equals_n_and_duplicates():
    x, _ = _blobs([10, 5], 3, seed=7)
    cent, labels = balanced_kmeans(x, 1, iters=2)
    assert torch.equal(labels, torch.zeros(15, dtype=torch.int64))
    torch.testing.assert_close(cent[0], x.mean(0))
    cent, labels = balanced_kmeans(x, 15, iters=2)
    assert sorted(labels.tolist()) == list(range(15))
    torch.testing.assert_close(cent[labels], x)  # each point is its own centroid
    same = torch.ones(12, 2)
    cent, labels = balanced_kmeans(same, 4, iters=3)
    assert torch.bincount(labels, minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.equal(cent, torch.ones(4, 2))


def test_segmented_single_segment_equals_balanced_kmeans():
    x, _ = _blobs([70, 30], 4, seed=8)
    one = balanced_kmeans(x, 6, iters=3, seed=9)
    seg = balanced_kmeans_segmented(x, torch.tensor([0, 100]), 6, iters=3, seed=9)
    assert torch.equal(seg.centroid_offsets, torch.tensor([0, 6]))
    assert torch.equal(seg.centroids, one.centroids) and torch.equal(seg.labels, one.labels)


def test_segmented_balances_every_segment_and_clamps_k():
    x, _ = _blobs([90, 40, 30], 5, seed=10)
    offsets = torch.tensor([0, 0, 100, 103, 160])  # an empty segment and a 3-row one
    res = balanced_kmeans_segmented(x, offsets, torch.tensor([4, 8, 5, 6]), iters=3, seed=1)
    assert res.centroid_offsets.tolist() == [0, 0, 8, 11, 17]  # k_s = min(k, n_s)
    assert res.centroids.shape == (17, 5)
    for s in range(4):
        a, b = int(offsets[s]), int(offsets[s + 1])
        ka, kb = int(res.centroid_offsets[s]), int(res.centroid_offsets[s + 1])
        if a == b:
            continue
        lab = res.labels[a:b]
        assert int(lab.min()) >= ka and int(lab.max()) < kb
        assert torch.equal(torch.bincount(lab - ka, minlength=kb - ka), default_capacity(b - a, kb - ka))


def test_bad_inputs():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="balanced_kmeans: k=11 exceeds the N=10 rows"):
        balanced_kmeans(x, 11)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        balanced_kmeans(x, 0)
    with pytest.raises(ValueError, match="iters must be an int >= 0"):
        balanced_kmeans(x, 2, iters=-1)
    with pytest.raises(ValueError, match="x must have dtype float32"):
        balanced_kmeans(x.double(), 2)
    bad = x.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        balanced_kmeans(bad, 2)
    with pytest.raises(ValueError, match="offsets must be non-decreasing from 0 to N=10"):
        balanced_kmeans_segmented(x, torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match=r"k must have shape \[2\]"):
        balanced_kmeans_segmented(x, torch.tensor([0, 4, 10]), torch.tensor([2]))
    with pytest.raises(ValueError, match="k must be >= 1 for every segment, got 0 for segment 1"):
        balanced_kmeans_segmented(x, torch.tensor([0, 4, 10]), torch.tensor([2, 0]))


def test_segment_pools_give_the_serial_result(monkeypatch):
    # Many-segment solves seed and build candidate lists in a pool of workers when segments
    # are large enough (resid_ext.balanced._SEGMENT_POOL_MACS) and torch has > 1 thread; the
    # result must not depend on it (seeding draws are taken in stream order first).
    import resid_ext.balanced as rb

    x, _ = _blobs([300, 250, 200, 150], 16, seed=12)
    offsets = torch.tensor([0, 240, 480, 720, 900])
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(rb, "_SEGMENT_POOL_MACS", 0)
        pooled = balanced_kmeans_segmented(x, offsets, 40, iters=4, seed=3)
        monkeypatch.setattr(rb, "_SEGMENT_POOL_MACS", 1 << 62)
        torch.set_num_threads(1)  # one worker: serial seeding too
        serial = balanced_kmeans_segmented(x, offsets, 40, iters=4, seed=3)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(pooled.centroids, serial.centroids)
    assert torch.equal(pooled.labels, serial.labels)


@pytest.mark.parametrize(("k", "iters", "sample", "warmup"),
                         [(2, 20, 1024, 15), (2, 10, 1024, 5), (8, 20, 1024, 10), (64, 20, 2048, 10), (128, 20, 0, 0)])
def test_warmup_schedule_follows_the_sample_size(monkeypatch, k, iters, sample, warmup):
    # n = 10240: the warm-up sample holds max(n / 10, 32 k) rows, used when that is <= n / 4.
    # k=2: 512 rows per cluster (>= WARMUP_LARGE_PER_CLUSTER) -> all but the last 5 of the 20
    # iterations on it; k=8 (128 per cluster) and k=64 (32) -> half; k=128: a 4096-row sample
    # is > n / 4.
    import resid.kmeans as rk

    calls = []
    real = rk.lloyd

    def spy(fn, x, *args, **kw):
        calls.append((x.shape[0], args[4]))  # (rows, iters) of each Lloyd run
        return real(fn, x, *args, **kw)

    monkeypatch.setattr(rk, "lloyd", spy)
    x, _ = _blobs([4000, 3000, 2000, 1240], 4, seed=13)
    _, labels = balanced_kmeans(x, k, iters=iters, seed=0)
    assert torch.equal(torch.bincount(labels, minlength=k), default_capacity(10240, k))
    if warmup:
        assert calls == [(sample, warmup - 1), (10240, iters - warmup)]
    else:
        assert calls == [(10240, iters)]


@pytest.mark.parametrize(("n", "d", "k", "dup"), [(300, 8, 40, 1), (200, 5, 200, 1), (60, 4, 45, 3), (500, 16, 7, 1)])
def test_kmeanspp_cpu_matches_the_plain_reference(n, d, k, dup):
    # The C++ seeding skips rows by the triangle inequality; the picks must be the plain
    # algorithm's. dup=3: every row three times, so the draws run out of positive distances
    # (k > n / 3 distinct rows) and fall back to uniform picks among the unchosen rows.
    import numpy as np

    from resid_ext import _C

    g = torch.Generator().manual_seed(n + k)
    x = (torch.randn(n // dup, d, generator=g) * torch.rand(n // dup, 1, generator=g) * 5).repeat(dup, 1).contiguous()
    rng = np.random.default_rng(k)
    first, u = int(rng.integers(x.shape[0])), rng.random(k - 1)
    out = torch.empty(k, dtype=torch.int64)
    _C.kmeanspp_cpu(x.data_ptr(), x.shape[0], d, k, first, torch.from_numpy(u).data_ptr(), out.data_ptr())
    assert out.tolist() == kmeanspp_indices(x, k, first, u)
    assert len(set(out.tolist())) == k  # never the same row twice


def test_row_split_solves_a_balanced_labelling_of_the_whole():
    # The parts share every capacity: their labels, put back in row order, are a balanced
    # labelling of the whole problem, each part holding exactly its share, at a cost close to
    # the whole problem's solve (a random partition constrains it only a little).
    import resid.kmeans as rk
    from resid_ext import balanced_assign

    x, _ = _blobs([1500, 900, 600], 8, seed=14, spread=2.0)
    k = 5
    cap = default_capacity(3000, k)
    cent = x[torch.randperm(3000, generator=torch.Generator().manual_seed(1))[:k]].clone()
    split = rk._RowSplit(x, cap, k, 2, torch.Generator().manual_seed(2))
    labels, prices = split.solve("test", cent, None, None, rk.FINE_EPS_DIV)
    assert prices.shape == (2 * k,)
    assert torch.equal(torch.bincount(labels, minlength=k), cap)
    for i in range(2):
        rows = split.perm[split.offsets[i]:split.offsets[i + 1]]
        assert torch.equal(torch.bincount(labels[rows], minlength=k), split.capacity[i * k:(i + 1) * k])
    whole = assignment_cost(x, cent, balanced_assign(x, cent, cap))
    assert whole * 0.999 <= assignment_cost(x, cent, labels) <= whole * 1.02


def test_balanced_kmeans_splits_its_rough_solves_when_parts_are_large(monkeypatch):
    # n = 10240, k = 2: parts of 5120 rows hold >= SPLIT_MIN_ROWS_PER_CLUSTER rows per cluster.
    # 6 iterations: 3 on the warm-up sample, then 4 all-rows solves of which the first 2 run as
    # parts and the last rough one and the fine one on the whole problem.
    import resid.kmeans as rk

    calls = []
    real = rk._RowSplit.solve

    def spy(self, *args, **kw):
        calls.append(self.parts)
        return real(self, *args, **kw)

    monkeypatch.setattr(rk._RowSplit, "solve", spy)
    x, _ = _blobs([4000, 3000, 2000, 1240], 4, seed=15)
    a = balanced_kmeans(x, 2, iters=6, seed=0)
    assert calls == [2, 2]
    assert torch.equal(torch.bincount(a.labels, minlength=2), default_capacity(10240, 2))
    b = balanced_kmeans(x, 2, iters=6, seed=0)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    calls.clear()
    balanced_kmeans(x, 64, iters=6, seed=0)  # 80 rows per cluster per part: no split
    assert calls == []
    monkeypatch.setattr(rk, "SPLIT_MAX_FLOATS", x.numel() - 1)  # x too large to copy: no split
    c = balanced_kmeans(x, 2, iters=6, seed=0)
    assert calls == []
    assert torch.equal(torch.bincount(c.labels, minlength=2), default_capacity(10240, 2))
