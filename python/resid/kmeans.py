"""Balanced k-means: k-means++ seeding, then Lloyd iterations whose assignment step is the
capacitated ``resid_ext`` kernel, so every cluster ends with ceil(N/k) or floor(N/k) points.

Two entry points:
- ``balanced_kmeans(x, k)``: one problem.
- ``balanced_kmeans_segmented(x, offsets, k)``: S independent problems in one call (all
  parents of a GAOQ level): rows ``x[offsets[s]:offsets[s+1]]`` are clustered into
  ``min(k_s, n_s)`` clusters; centroids come back concatenated with CSR ``centroid_offsets``.
Deterministic for a seed on a given device: seeding draws from a CPU ``torch.Generator``,
the auction is deterministic, and centroid sums use a fixed reduction order.
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from resid_ext import _C
from resid_ext import _validate as V
from resid_ext.balanced import (
    FINE_EPS_DIV,
    FIRST_EPS_DIV,
    ROUGH_EPS_DIV,
    SolveWorkspace,
    _solve,
    caller_threads,
    default_capacity,
    solve_threads,
    torch_threads,
)

__all__ = ["BalancedKMeans", "SegmentedKMeans", "balanced_kmeans", "balanced_kmeans_segmented"]

#: Balanced Lloyd solves at the fine eps at the end of a run (the earlier ones are rough).
FINE_TAIL = 1

#: k-means++ runs on a seeded subsample of at most this many points per cluster.
SEED_SAMPLE_PER_CLUSTER = 32

#: balanced_kmeans runs the first iters * WARMUP_FRACTION (rounded down) of its Lloyd
#: iterations on a seeded sample of max(N / WARMUP_SAMPLE_DIV, WARMUP_SAMPLE_PER_CLUSTER * k)
#: rows, when that is at most N / 4. When the sample holds at least WARMUP_LARGE_PER_CLUSTER
#: rows per cluster (faiss's default training-set size, max_points_per_centroid = 256: enough
#: rows to place every centroid), all iterations but the last WARMUP_LARGE_FULL_ITERS run on
#: it (but at least that fraction).
WARMUP_FRACTION = 0.5
WARMUP_LARGE_PER_CLUSTER = 256
WARMUP_LARGE_FULL_ITERS = 5
WARMUP_SAMPLE_DIV = 10
WARMUP_SAMPLE_PER_CLUSTER = 32

#: balanced_kmeans solves its all-rows rough Lloyd steps, all but the last one, as
#: SPLIT_PARTS independent problems on a seeded random partition of the rows (``_RowSplit``)
#: when every part holds at least SPLIT_MIN_ROWS_PER_CLUSTER rows per cluster. The parts'
#: auctions run in parallel (one problem's auction is sequential). The split holds a permuted
#: copy of x and its own solve buffers, so it is skipped when x exceeds SPLIT_MAX_FLOATS
#: (4 GiB of float32): at 10M x 128, K = 1024 the copy would take the run past 24 GB. A size
#: rule, not a free-memory test, so the labels do not depend on the machine's load.
SPLIT_PARTS = 2
SPLIT_MIN_ROWS_PER_CLUSTER = 128
SPLIT_MAX_FLOATS = 1 << 30


class BalancedKMeans(NamedTuple):
    centroids: torch.Tensor  # [k, d] float32
    labels: torch.Tensor  # [N] int64 in [0, k)


class SegmentedKMeans(NamedTuple):
    centroids: torch.Tensor  # [sum_s k_s, d] float32, segment s's clusters contiguous
    centroid_offsets: torch.Tensor  # [S+1] int64 (CSR over centroids)
    labels: torch.Tensor  # [N] int64, global centroid index (inside its segment's range)


def _check_x(fn: str, x: object) -> torch.Tensor:
    x = V.check_tensor(x, "x", fn)
    V.check_ndim(x, "x", 2, fn, "[N, d]")
    allowed = (torch.float32, torch.bfloat16, torch.float16) if x.device.type == "cuda" else (torch.float32,)
    V.check_dtype(x, "x", allowed, fn)
    V.check_finite(x, "x", fn)
    return x


def _check_iters_seed(fn: str, iters: int, seed: int) -> None:
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"{fn}: iters must be an int >= 0, got {iters!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"{fn}: seed must be an int, got {type(seed).__name__}")


def _seed_draws(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """The random draws of one k-means++ seeding of n rows into k, in stream order: the
    seeded subsample (row indices) and the seed of the numpy generator that picks centres.
    Drawing them first lets segments be seeded in any order (or in parallel) with the same
    result, and lets a sharded GAOQ rank skip the seeding of other ranks' parents."""
    p = min(n, max(k, SEED_SAMPLE_PER_CLUSTER * k))
    sample = torch.randperm(n, generator=gen)[:p] if p < n else torch.arange(n)
    return sample, int(torch.randint(0, 2**62, (1,), generator=gen))


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on a seeded subsample. x: [n, d] float32 -> centroids [k, d] (copies).
    One thread (see _kmeanspp_from)."""
    sample, rng_seed = _seed_draws(x.shape[0], k, gen)
    with torch_threads(1):
        return _kmeanspp_from(x, k, sample, rng_seed)


def _kmeanspp_from(x: torch.Tensor, k: int, sample: torch.Tensor, rng_seed: int) -> torch.Tensor:
    """k-means++ on rows ``sample`` of x with centre picks from ``np.random.default_rng(rng_seed)``
    (the draws of ``_seed_draws``) -> centroids [k, d] float32 (copies).

    Each new centre is drawn with probability proportional to its squared distance to the
    nearest chosen centre; with every remaining distance 0 (duplicates) it is drawn uniformly
    among the rows not yet chosen. C++ on the CPU in float64 (``_C.kmeanspp_cpu``), so seeds
    are identical on every device; one thread per call (many segments are seeded by a pool of
    callers). It skips the rows a new centre cannot be nearer to (triangle inequality): the
    torch loop it replaced spent ~390k small ops on GAOQ level 2 at 1M x 128 (6.1 s) and
    streamed the whole float64 sample per centre at d=640 (0.82 s at 100k x 640, K=256).
    """
    p = sample.numel()
    if not 1 <= k <= p:  # _seed_draws guarantees it; the C++ loop relies on it
        raise RuntimeError(f"k-means++: k={k} centres need 1 <= k <= {p} sampled rows")
    rng = np.random.default_rng(rng_seed)
    first = int(rng.integers(p))
    u = torch.from_numpy(rng.random(max(k - 1, 0)))  # float64, one draw per later centre
    xs = x[sample.to(x.device)].to(device="cpu", dtype=torch.float32).contiguous()
    idx = torch.empty(k, dtype=torch.int64)
    _C.kmeanspp_cpu(xs.data_ptr(), p, xs.shape[1], k, first, u.data_ptr(), idx.data_ptr())
    return x[sample[idx].to(x.device)].to(torch.float32).clone()


def seed_segments(
    rows: Callable[[int], Any], ks: list[int], draws: list[tuple[torch.Tensor, int]], workers: int
) -> list[torch.Tensor]:
    """k-means++ centroids of several segments: segment i has rows ``rows(i)`` (an [n_i, d]
    tensor, or anything _kmeanspp_from can index), ks[i] clusters and draws[i] from
    ``_seed_draws``. A pool of ``workers`` single-threaded workers when workers > 1 (each
    segment's seeds depend only on its rows and draws, so the schedule does not matter; 1.9x
    on 2 cores). Call with torch on one thread (inside ``torch_threads(1)``)."""
    def one(i: int) -> torch.Tensor:
        return _kmeanspp_from(rows(i), ks[i], *draws[i])

    if workers > 1 and len(ks) > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(len(ks))))
    return [one(i) for i in range(len(ks))]


def _centroid_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster row sums [k, d] in a fixed order (deterministic on CPU and CUDA)."""
    if x.device.type == "cpu":
        # C++, rows in order (x and labels contiguous): no copy of x, unlike sort + gather. On
        # the caller's threads, also where a small solve holds torch to one (one region).
        sums = torch.empty((k, x.shape[1]), dtype=torch.float32)
        xc, lc = x.contiguous(), labels.contiguous()
        _C.cluster_sums_cpu(xc.data_ptr(), lc.data_ptr(), xc.shape[0], xc.shape[1], k, sums.data_ptr(),
                            caller_threads())
        return sums
    # CUDA atomics would make the sums order-dependent: a one-hot GEMM per chunk is fixed.
    sums = torch.zeros((k, x.shape[1]), dtype=x.dtype, device=x.device)
    chunk = max(1, (1 << 24) // max(k, 1))
    ar = torch.arange(k, device=x.device)
    for i0 in range(0, x.shape[0], chunk):
        onehot = (labels[i0 : i0 + chunk, None] == ar[None, :]).to(x.dtype)
        sums += onehot.t() @ x[i0 : i0 + chunk]
    return sums


def _update(x: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's rows; an empty cluster keeps its previous centroid."""
    k = old.shape[0]
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    sums = _centroid_sums(x, labels, k)
    new = sums / counts.clamp(min=1)[:, None]
    return torch.where((counts > 0)[:, None], new, old)


class _RowSplit:
    """One problem (all rows, k clusters) solved as ``parts`` independent problems on a seeded
    random partition of its rows: part i holds rows ``perm[o[i]:o[i+1]]`` (a copy of x in that
    order) and a share of every capacity, the shares adding up to the problem's, so a
    balanced labelling of the parts is one of the whole. Each part's assignment is optimal
    for the part, not for the whole: for rough Lloyd steps only, which just move centroids.
    The segmented kernel solves the parts at once, in parallel on CPU (one problem's auction
    is sequential). Measured at 2 threads, 20 iterations, K=256 (bench data, data seeds 0-2):
    1M x 128 28.1 -> 24.6 s, 35.4 -> 26.2 s, 25.2 -> 27.7 s, final cost -0.33%, -0.01%,
    -0.02%; 300k x 128 9.73 -> 9.41 s and 9.61 -> 9.50 s, cost -0.03% and -0.1%; 100k x 640
    7.42 -> 6.30 s, cost -0.53%; 20k x 64, K=64, 10 iterations: same time, cost +0.15%. The
    final solves are on the whole problem, so the final labels are as balanced and as close to
    optimal for the final centroids as before."""

    def __init__(self, x: torch.Tensor, capacity: torch.Tensor, k: int, parts: int, gen: torch.Generator) -> None:
        n, dev = x.shape[0], x.device
        self.k, self.parts = k, parts
        self.perm = torch.randperm(n, generator=gen).to(dev)
        self.x = x[self.perm].contiguous()
        size_t = default_capacity(n, parts)  # part sizes as equal as possible
        sizes = size_t.tolist()
        caps, rest = [], capacity.clone()
        for size in sizes[:-1]:
            caps.append(default_capacity(size, k, dev))
            rest = rest - caps[-1]
        if int(rest.min()) < 0:  # the caller's rows-per-cluster rule rules it out
            raise RuntimeError(f"_RowSplit: parts of {sizes} rows cannot share capacities {capacity.tolist()[:4]}...")
        self.capacity = torch.cat(caps + [rest])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(size_t, 0)]).to(dev)
        self.centroid_offsets = (torch.arange(parts + 1, dtype=torch.int64) * k).to(dev)
        # Label offset of each permuted row: part i's clusters are i*k .. i*k + k - 1.
        self.label_shift = torch.repeat_interleave(torch.arange(parts, dtype=torch.int64) * k, size_t).to(dev)
        self.ws = SolveWorkspace()

    def solve(self, fn: str, centroids: torch.Tensor, prices: torch.Tensor | None, labels: torch.Tensor | None,
              eps_div: float) -> tuple[torch.Tensor, torch.Tensor]:
        """A Lloyd solve of the whole problem as its parts: labels [n] of the whole (row
        order of x) and prices [parts * k] (each part's). ``prices``: [k] or [parts * k]."""
        if prices is not None and prices.numel() == self.k:
            prices = prices.repeat(self.parts)
        init = None if labels is None else labels[self.perm] + self.label_shift
        lab, prices = _solve(fn, self.x, self.offsets, centroids.repeat(self.parts, 1), self.centroid_offsets,
                             self.capacity, prices, init_labels=init, eps_div=eps_div, ws=self.ws)
        out = torch.empty_like(lab)
        out[self.perm] = lab - self.label_shift
        return out, prices


def balanced_kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> BalancedKMeans:
    """Balanced k-means of x into k clusters of sizes ceil(N/k) or floor(N/k).

    x: [N, d] float32 (bf16/fp16 also on CUDA; computed in float32); 1 <= k <= N; iters >= 0
    Lloyd iterations (each: balanced assignment, then centroid = mean of its rows; fewer when
    an assignment changes no label, a fixed point); the final labels are a balanced
    assignment to the returned centroids (see ``lloyd`` for the eps schedule).
    Returns BalancedKMeans(centroids [k, d] float32, labels [N] int64).
    """
    fn = "balanced_kmeans"
    x = _check_x(fn, x)
    _check_iters_seed(fn, iters, seed)
    n = x.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{fn}: k must be an int >= 1, got {k!r}")
    if k > n:
        raise ValueError(f"{fn}: k={k} exceeds the N={n} rows of x; k must be <= N")
    with torch_threads(solve_threads(x.device, 1, n * k * x.shape[1])):
        return _kmeans_body(fn, x, k, iters, seed)


def _kmeans_body(fn: str, x: torch.Tensor, k: int, iters: int, seed: int) -> BalancedKMeans:
    """balanced_kmeans after validation.

    Early Lloyd iterations move centroids far, so their balanced solves re-route many points
    (several bids per point each); the first WARMUP_FRACTION (half) of the iterations
    therefore runs on a seeded sample (warm-up), the rest on all rows. Measured at 100k x 128, K=256, 20
    iterations, 3 data seeds: -25% CPU time, final cost +0.02%, -0.6%, -0.25%. A sample of at
    least WARMUP_LARGE_PER_CLUSTER rows per cluster takes all iterations but the last
    WARMUP_LARGE_FULL_ITERS (5): at 1M x 128, K=256, 20 iterations (15 on the sample), 3 data
    seeds, 2 threads: -18%, -15%, -22% wall time, final cost +0.012%, +0.027%, -0.10%. Fewer
    all-rows iterations cost time instead (10 iterations, 7 on the sample: GAOQ level 1 at 1M
    13.8 -> 16.4 s). Smaller samples keep half: at 10k x 128, K=64 (32 rows per cluster) 3/4
    on the sample cost +1.6%.
    """
    n = x.shape[0]
    x32 = x.to(torch.float32).contiguous()
    dev = x32.device
    gen = torch.Generator().manual_seed(seed)
    centroids = _kmeanspp(x32, k, gen)
    c_off = torch.tensor([0, k], dtype=torch.int64, device=dev)
    sample_n = max(n // WARMUP_SAMPLE_DIV, WARMUP_SAMPLE_PER_CLUSTER * k)
    warmup = int(iters * WARMUP_FRACTION)
    if sample_n >= WARMUP_LARGE_PER_CLUSTER * k:
        warmup = max(warmup, iters - WARMUP_LARGE_FULL_ITERS)
    if 4 * sample_n > n:
        warmup = 0
    if warmup > 0:
        pick = torch.randperm(n, generator=gen)[:sample_n].to(dev)
        xs = x32[pick].contiguous()
        s_off = torch.tensor([0, sample_n], dtype=torch.int64, device=dev)
        # warmup Lloyd iterations (solve, update) with no fine solve. The sample's prices seed
        # the first solve on all rows: transportation prices are in distance units and barely
        # depend on the sample size (that solve took 1.3 s with prices estimated on 16 points
        # per cluster, 1.1 s seeded, at 100k x 128, K=256).
        centroids, s_labels, prices = lloyd(fn, xs, s_off, centroids, c_off, default_capacity(sample_n, k, dev),
                                            warmup - 1, fine_tail=0, early_stop=True)
        centroids = _update(xs, s_labels, centroids)
    else:
        prices = None
    cap = default_capacity(n, k, dev)
    offsets = torch.tensor([0, n], dtype=torch.int64, device=dev)
    split = n >= SPLIT_PARTS * SPLIT_MIN_ROWS_PER_CLUSTER * k and n * x32.shape[1] <= SPLIT_MAX_FLOATS
    # Passed, not held here: lloyd drops it (its copy of x and its buffers) when done with it.
    centroids, labels, _ = lloyd(fn, x32, offsets, centroids, c_off, cap, iters - warmup, prices=prices,
                                 early_stop=True, split=_RowSplit(x32, cap, k, SPLIT_PARTS, gen) if split else None)
    return BalancedKMeans(centroids, labels)


def lloyd(
    fn: str, x: torch.Tensor, offsets: torch.Tensor, centroids: torch.Tensor, centroid_offsets: torch.Tensor,
    capacity: torch.Tensor, iters: int, fine_tail: int = FINE_TAIL, prices: torch.Tensor | None = None,
    early_stop: bool = False, split: _RowSplit | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced Lloyd iterations from the given (seeded) centroids; validated float32 inputs in
    the layout of ``_solve``. Returns (centroids, labels, prices): labels a balanced assignment
    to the centroids, prices [K] that solve's dual prices. ``prices`` seeds the first solve's
    reserve prices (else they are estimated on a sample). ``split`` (one problem only): its
    rough solves but the last one run as the split's parts (``_RowSplit``); the last rough
    solve and the fine ones run on the whole problem, from the parts' mean prices (without
    that whole-problem rough solve the final fine one started far off: 300k x 128, 5.1 s
    against 1.7 s).

    The first solve is cold; each later one warm-starts from the previous labels and prices
    (a Lloyd step moves centroids little, so most points keep their cluster). Solves only move
    centroids until the last ``fine_tail`` (default FINE_TAIL), so they stop early: the first
    at FIRST_EPS_DIV, the others at ROUGH_EPS_DIV. Measured at 300k x 128, K=256, 20
    iterations, 2 data seeds: scale/2 instead of scale/8 for the second half, 17% less time,
    final cost +0.05%; one fine solve at the end instead of three, -10% time, cost
    +0.01-0.03%; the first solve at 2 x scale instead of scale/2, -7% and -17% time, cost
    -0.44% and -0.04% (Lloyd local optima differ by this much between settings). Once the
    labels stop changing (``early_stop``: one problem), or for the last ``fine_tail`` solves,
    they run at the fine eps; a fine solve that changes no label is a fixed point (the
    centroids are already the means of the labels), so the run stops there.
    """
    fine_from = iters + 1 - fine_tail  # index of the first solve that is fine in any case
    fine = fine_from <= 0
    ws = SolveWorkspace()  # every solve has the same x, segments and capacities: reuse buffers
    k = centroids.shape[0]

    def solve(it: int, labels: torch.Tensor | None, prices: torch.Tensor | None,
              fine: bool) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal split
        eps_div = FINE_EPS_DIV if fine else (FIRST_EPS_DIV if it == 0 else ROUGH_EPS_DIV)
        if split is not None and not fine and it < fine_from - 1:
            return split.solve(fn, centroids, prices, labels, eps_div)
        split = None  # done with the parts: free their copy of x and their buffers
        if prices is not None and prices.numel() != k:
            prices = prices.view(-1, k).mean(0)
        return _solve(fn, x, offsets, centroids, centroid_offsets, capacity, prices, init_labels=labels,
                      eps_div=eps_div, ws=ws)

    labels, prices = solve(0, None, prices, fine)
    for it in range(1, iters + 1):
        if centroids.shape[0] > 0:
            centroids = _update(x, labels, centroids)
        fine = fine or it >= fine_from
        new, prices = solve(it, labels, prices, fine)
        # One problem only (early_stop): with several segments a global "no label changed"
        # would depend on which segments share the call (sharded GAOQ must give one process's
        # SIDs, and a rank may hold a single parent).
        unchanged = early_stop and torch.equal(new, labels)
        labels = new
        if unchanged and fine:
            break
        fine = fine or unchanged  # rough fixed point: refine from here
    return centroids, labels, prices


def balanced_kmeans_segmented(
    x: torch.Tensor,
    offsets: torch.Tensor,
    k: int | torch.Tensor,
    iters: int = 20,
    seed: int = 0,
) -> SegmentedKMeans:
    """Balanced k-means inside every segment at once (GAOQ: all parents of a level).

    x: [N, d] float32 (bf16/fp16 also on CUDA); offsets: [S+1] int64 CSR over rows (empty
    segments legal); k: an int for every segment or [S] int64 per segment, each >= 1.
    Segment s gets k_s = min(k[s], n_s) clusters (0 when empty) with sizes ceil/floor of
    n_s / k_s. Seeding uses generator seed ``seed`` for all segments in order.
    Returns SegmentedKMeans(centroids [sum k_s, d] float32, centroid_offsets [S+1] int64,
    labels [N] int64 global centroid indices, ``centroid_offsets[s] <= labels[i] <
    centroid_offsets[s+1]`` for rows i of segment s).
    """
    fn = "balanced_kmeans_segmented"
    x = _check_x(fn, x)
    _check_iters_seed(fn, iters, seed)
    offsets = V.check_tensor(offsets, "offsets", fn)
    V.check_dtype(offsets, "offsets", (torch.int64,), fn)
    V.check_ndim(offsets, "offsets", 1, fn, "[S+1]")
    o = offsets.cpu()
    n = x.shape[0]
    if o.numel() < 1 or int(o[0]) != 0 or int(o[-1]) != n or bool((o[1:] < o[:-1]).any()):
        raise ValueError(f"{fn}: offsets must be non-decreasing from 0 to N={n}, got {o.tolist()[:8]}...")
    S = o.numel() - 1
    seg_n = o[1:] - o[:-1]
    if isinstance(k, torch.Tensor):
        V.check_dtype(k, "k", (torch.int64,), fn)
        V.check_shape(k, "k", (S,), fn)
        ks = k.cpu()
    elif isinstance(k, int) and not isinstance(k, bool):
        ks = torch.full((S,), k, dtype=torch.int64)
    else:
        raise TypeError(f"{fn}: k must be an int or an int64 tensor [S], got {type(k).__name__}")
    if S > 0 and bool((ks < 1).any()):
        s = int(torch.nonzero(ks < 1)[0, 0])
        raise ValueError(f"{fn}: k must be >= 1 for every segment, got {int(ks[s])} for segment {s}")
    ks = torch.minimum(ks, seg_n)
    # Per-segment seeding and updates are many small torch ops: one thread (see torch_threads).
    with torch_threads(solve_threads(x.device, S, 0)):
        return _segmented_body(fn, x, o, ks, iters, seed)


def _segmented_body(fn: str, x: torch.Tensor, o: torch.Tensor, ks: torch.Tensor, iters: int, seed: int) -> SegmentedKMeans:
    """balanced_kmeans_segmented after validation: o [S+1] CPU offsets, ks [S] clamped k_s."""
    S = o.numel() - 1
    x32 = x.to(torch.float32).contiguous()
    dev = x32.device
    c_off = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(ks, 0)])
    gen = torch.Generator().manual_seed(seed)
    caps = [torch.zeros(0, dtype=torch.int64)]
    ol, kl = o.tolist(), ks.tolist()
    seeded = [s for s in range(S) if kl[s] > 0]
    draws = [_seed_draws(ol[s + 1] - ol[s], kl[s], gen) for s in seeded]  # stream order
    workers = caller_threads() if dev.type == "cpu" else 1
    cents = [torch.zeros((0, x32.shape[1]), dtype=torch.float32, device=dev)]
    cents += seed_segments(lambda i: x32[ol[seeded[i]] : ol[seeded[i] + 1]], [kl[s] for s in seeded], draws, workers)
    caps += [default_capacity(ol[s + 1] - ol[s], kl[s]) for s in seeded]
    centroids = torch.cat(cents)
    cap = torch.cat(caps).to(dev)
    offsets_d, c_off_d = o.to(dev), c_off.to(dev)
    centroids, labels, _ = lloyd(fn, x32, offsets_d, centroids, c_off_d, cap, iters, early_stop=S == 1)
    return SegmentedKMeans(centroids, c_off_d, labels)
