"""Balanced assignment: give each point a cluster so that no cluster exceeds its capacity and
the total squared Euclidean distance is near the optimum.

Two steps, the same on CPU and CUDA:
1. Candidates (here, torch): tile over points, one GEMM per tile (||x||^2 - 2 x.c + ||c||^2,
   the formulation faiss uses), keep each point's m nearest clusters. Peak extra memory is
   O(tile * K + N * m), never N x K.
2. Capacities (``resid_ext._C``): an epsilon-scaled auction on the candidate lists with an
   exact fallback, OpenMP across segments (csrc/balanced/assign_common.h explains it).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator

import torch

from resid_ext import _C
from resid_ext import _validate as V
from resid_ext._device import cuda_stream, require_cuda_kernels

__all__ = ["balanced_assign", "balanced_assign_segmented", "default_capacity"]


#: Below this many multiply-adds per solve (N*K*d) the torch ops are too small to gain from threads.
_SMALL_SOLVE_MACS = 1 << 30


def solve_threads(device: torch.device, segments: int, macs: int) -> int:
    """Torch threads for a solve: 1 on CPU for many segments or fewer than _SMALL_SOLVE_MACS
    multiply-adds (measured on 10k x 128, K=64, 20 Lloyd iterations on 2 busy cores: 4.4 s
    with 2 threads, 1.3 s with 1), else torch's current setting."""
    if device.type == "cpu" and (segments > 1 or macs < _SMALL_SOLVE_MACS):
        return 1
    return torch.get_num_threads()


#: Multi-segment solves compute candidates in a thread pool when a segment's GEMM averages at
#: least this many multiply-adds, (N/S) x (K/S) x d (a GAOQ level-2 parent at 1M x 128:
#: 3.9k x 256 x 128 = 1.3e8).
_SEGMENT_POOL_MACS = 1 << 24

#: torch's thread count outside the outermost torch_threads block (None outside any).
_caller_threads: int | None = None


def caller_threads() -> int:
    """The thread count the caller set for torch, also inside torch_threads blocks."""
    return _caller_threads if _caller_threads is not None else torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count.

    Many small segments mean many small torch ops (a [2k, 128] GEMM, a top-k), and there a
    multi-threaded op pays a thread wake-up/barrier that dwarfs its work, badly so on a
    shared machine: measured on 2 busy cores, one 1560 x 128 x 128 addmm took 15.6 ms with 2
    threads and 0.54 ms with 1 (GAOQ level 2 at 100k x 128, 64 x 128 clusters: 24 s -> 3 s).
    """
    global _caller_threads
    old = torch.get_num_threads()
    outermost = _caller_threads is None
    if outermost:
        _caller_threads = old
    try:
        if n != old:
            torch.set_num_threads(n)
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)
        if outermost:
            _caller_threads = None

#: Final auction eps = mean nearest distance / this: cost within ~0.2% of the optimum.
FINE_EPS_DIV = 512.0
#: Final eps of the Lloyd solves of balanced k-means before the last (their assignments only
#: move centroids; the last solve uses FINE_EPS_DIV): one eps phase per solve.
ROUGH_EPS_DIV = 2.0
#: Final eps of the first Lloyd solve (centroids fresh from seeding or a sample, far from
#: final, so its labels only start the descent): eps = 2 x scale, a short price war.
FIRST_EPS_DIV = 0.5

#: Candidate clusters kept per point (the whole list when K <= this).
DEFAULT_CANDIDATES = 32
#: Distance-tile budget in floats (tile rows = budget // K): 16 MiB of float32.
_TILE_FLOATS = 1 << 22


#: CUDA solves with fewer segments than this run their auction on the host. The GPU kernel
#: solves each segment on one GPU thread, far slower than a CPU core at one segment's
#: sequential auction, so it only wins with many segments to run side by side. Measured on an
#: H100 beside 16 host cores (bench/auction_device.py, 262k x 64): 64 segments of 64 clusters,
#: host 2.3x faster; 256 x 16, 1024 x 8, 4096 x 4, kernel 1.8-1.9x faster. One 100k x 128 K=256
#: balanced_kmeans: 95 s with the kernel, 4.3 s with the host auction. The candidate lists
#: (the GEMMs) are computed on the GPU either way.
GPU_AUCTION_MIN_SEGMENTS = 128


def auction_device(device: torch.device, segments: int) -> torch.device:
    """Where a solve of ``segments`` segments on ``device`` runs its auction."""
    if device.type == "cuda" and segments < GPU_AUCTION_MIN_SEGMENTS:
        return torch.device("cpu")
    return device


class SolveWorkspace:
    """Buffers shared by the solves of one Lloyd run (one x, one segment layout).

    A solve's workspaces are large (at 1M x 128, K=256: a 1 GiB distance cache and 256 MiB
    of candidate lists) and fresh memory is paid for in page faults on first touch, on
    every solve. Reusing them across a run's solves takes that out (with ||x||^2, which
    depends on x alone, and the cache and heap layouts, which depend on the segments and
    capacities alone). Use one workspace per x and capacities: ``row_norm`` belongs to the x
    it was first computed for.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        self.row_norm: torch.Tensor | None = None
        # (key, state) of what depends on the segments and capacities only (_solve_body).
        self.layout: tuple[tuple, dict] | None = None
        # name -> (GPU tensor, its _version, host copy): inputs that stay the same across a
        # run's solves when the auction runs on the host (auction_device), copied once.
        self._host: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def buffer(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 1-D tensor of ``numel`` elements, uninitialised (the previous solve's contents)."""
        t = self._bufs.get(name)
        if t is None or t.numel() != numel or t.dtype != dtype or t.device != device:
            t = self._bufs[name] = torch.empty(numel, dtype=dtype, device=device)
        return t

    def host_copy(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A host copy of ``t``, made once while ``t`` is the same tensor, unmodified (x and
        the capacities of a Lloyd run). Copying the capacities into a buffer on every solve
        changed their version, and with it the layout key: _layout ran on every solve."""
        hit = self._host.get(name)
        if hit is None or hit[0] is not t or hit[1] != t._version:
            hit = self._host[name] = (t, t._version, t.to("cpu", copy=True))
        return hit[2]


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """||x_i||^2 per row of x [n, d] float32 -> [n], in row chunks (no n x d temporary)."""
    n = x.shape[0]
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    chunk = max(1, _TILE_FLOATS // max(x.shape[1], 1))
    for i0 in range(0, n, chunk):
        xt = x[i0 : i0 + chunk]
        torch.sum(xt * xt, 1, out=out[i0 : i0 + chunk])
    return out


def default_capacity(n: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sizes as equal as possible: ``n % k`` clusters of ``ceil(n/k)``, the rest ``floor(n/k)``.

    Returns capacity: [k] int64.
    """
    if k <= 0:
        raise ValueError(f"default_capacity: k must be >= 1, got {k}")
    base, rem = divmod(int(n), int(k))
    cap = torch.full((k,), base, dtype=torch.int64, device=device)
    cap[:rem] += 1
    return cap


def _float_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    if device.type == "cuda":
        return (torch.float32, torch.bfloat16, torch.float16)
    return (torch.float32,)


def _check_points(fn: str, x: object, centroids: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = V.check_tensor(x, "x", fn)
    centroids = V.check_tensor(centroids, "centroids", fn)
    V.check_ndim(x, "x", 2, fn, "[N, d]")
    V.check_ndim(centroids, "centroids", 2, fn, "[K, d]")
    V.check_same_device(fn, x=x, centroids=centroids)
    allowed = _float_dtypes(x.device)
    V.check_dtype(x, "x", allowed, fn)
    V.check_dtype(centroids, "centroids", allowed, fn)
    if centroids.dtype != x.dtype:
        raise ValueError(f"{fn}: centroids must have the dtype of x ({x.dtype}), got {centroids.dtype}")
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(
            f"{fn}: centroids must have d={x.shape[1]} columns to match x, got shape {list(centroids.shape)}"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: tensors must be on cpu or cuda, got {x.device}")
    V.check_finite(x, "x", fn)
    V.check_finite(centroids, "centroids", fn)
    return x, centroids


def _check_capacity(fn: str, capacity: object, k: int, device: torch.device) -> torch.Tensor:
    capacity = V.check_tensor(capacity, "capacity", fn)
    V.check_same_device(fn, centroids=torch.empty(0, device=device), capacity=capacity)
    V.check_dtype(capacity, "capacity", (torch.int64,), fn)
    V.check_shape(capacity, "capacity", (k,), fn)
    if k > 0 and bool((capacity < 0).any()):
        first = int(torch.nonzero(capacity < 0)[0, 0])
        raise ValueError(f"{fn}: capacity must be >= 0, got {int(capacity[first])} at index {first}")
    return capacity.contiguous()


def _check_offsets(fn: str, offsets: object, name: str, total: int, of: str) -> torch.Tensor:
    offsets = V.check_tensor(offsets, name, fn)
    V.check_dtype(offsets, name, (torch.int64,), fn)
    V.check_ndim(offsets, name, 1, fn, "[S+1]")
    if offsets.numel() < 1:
        raise ValueError(f"{fn}: {name} must have at least one entry ([S+1] with S >= 0), got shape [0]")
    o = offsets.cpu()
    if int(o[0]) != 0:
        raise ValueError(f"{fn}: {name} must start at 0, got {int(o[0])}")
    if int(o[-1]) != total:
        raise ValueError(f"{fn}: {name} must end at {of}={total}, got {int(o[-1])}")
    if bool((o[1:] < o[:-1]).any()):
        s = int(torch.nonzero(o[1:] < o[:-1])[0, 0])
        raise ValueError(f"{fn}: {name} must be non-decreasing, got {int(o[s])} then {int(o[s + 1])} at {s}")
    return offsets.contiguous()


def balanced_assign(
    x: torch.Tensor, centroids: torch.Tensor, capacity: torch.Tensor | None = None
) -> torch.Tensor:
    """Assign each row of ``x`` to a centroid, at most ``capacity[k]`` rows per centroid.

    x: [N, d] float32 (bf16/fp16 also on CUDA); centroids: [K, d] same dtype and device,
    1 <= K <= N; capacity: [K] int64 >= 0 with sum >= N, default ``default_capacity(N, K)``
    (sizes differ by at most one). Returns labels: [N] int64 in [0, K). The total squared
    distance is within 0.2% of the optimum on the candidate graph (see assign_common.h).
    """
    fn = "balanced_assign"
    x, centroids = _check_points(fn, x, centroids)
    n, k = x.shape[0], centroids.shape[0]
    if k == 0:
        raise ValueError(f"{fn}: centroids must have at least one row (K >= 1), got shape {list(centroids.shape)}")
    if k > n:
        raise ValueError(f"{fn}: K={k} centroids exceed N={n} points; K must be <= N")
    if capacity is None:
        capacity = default_capacity(n, k, x.device)
    capacity = _check_capacity(fn, capacity, k, x.device)
    total = int(capacity.sum())
    if total < n:
        raise ValueError(f"{fn}: capacity must sum to at least N={n}, got {total}")
    offsets = torch.tensor([0, n], dtype=torch.int64, device=x.device)
    c_off = torch.tensor([0, k], dtype=torch.int64, device=x.device)
    labels, _ = _solve(fn, x, offsets, centroids, c_off, capacity)
    return labels


def balanced_assign_segmented(
    x: torch.Tensor,
    offsets: torch.Tensor,
    centroids: torch.Tensor,
    centroid_offsets: torch.Tensor,
    capacity: torch.Tensor,
) -> torch.Tensor:
    """Solve S independent balanced assignments in one call (all parents of a GAOQ level).

    x: [N, d]; offsets: [S+1] int64 (rows of segment s are ``x[offsets[s]:offsets[s+1]]``);
    centroids: [K, d]; centroid_offsets: [S+1] int64 (segment s owns
    ``centroids[centroid_offsets[s]:centroid_offsets[s+1]]``); capacity: [K] int64 >= 0 whose
    sum over each segment's clusters is >= that segment's row count. Empty segments are legal
    and a segment may have more clusters than rows. Returns labels: [N] int64, global cluster
    indices (each row's label lies in its own segment's cluster range).
    """
    fn = "balanced_assign_segmented"
    x, centroids = _check_points(fn, x, centroids)
    n, k = x.shape[0], centroids.shape[0]
    offsets = _check_offsets(fn, offsets, "offsets", n, "N")
    centroid_offsets = _check_offsets(fn, centroid_offsets, "centroid_offsets", k, "K")
    V.check_same_device(fn, x=x, offsets=offsets, centroid_offsets=centroid_offsets)
    if centroid_offsets.shape != offsets.shape:
        raise ValueError(
            f"{fn}: centroid_offsets must have shape {list(offsets.shape)} to match offsets (S+1), "
            f"got {list(centroid_offsets.shape)}"
        )
    capacity = _check_capacity(fn, capacity, k, x.device)
    o, co = offsets.cpu(), centroid_offsets.cpu()
    seg_cap = _segment_sums(capacity.cpu(), co)
    need = o[1:] - o[:-1]
    short = seg_cap < need
    if bool(short.any()):
        s = int(torch.nonzero(short)[0, 0])
        raise ValueError(
            f"{fn}: capacity of segment {s} (centroids {int(co[s])}:{int(co[s + 1])}) sums to "
            f"{int(seg_cap[s])}, fewer than its {int(need[s])} rows"
        )
    labels, _ = _solve(fn, x, offsets, centroids, centroid_offsets, capacity)
    return labels


def _segment_sums(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-segment sums of ``values`` [K] over CSR ``offsets`` [S+1] (CPU)."""
    csum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(values, 0)])
    return csum[offsets[1:]] - csum[offsets[:-1]]


def _candidates(
    x: torch.Tensor, xn: torch.Tensor, c: torch.Tensor, p0: torch.Tensor, m: int,
    cand_idx: torch.Tensor, cand_dist: torch.Tensor, cache: torch.Tensor | None = None, select_threads: int = 0,
) -> None:
    """Fill cand_idx/cand_dist [n, m] (slices of the global lists) with each row's min(m, K)
    clusters of smallest d + p0, in any order; x: [n, d], xn: [n] its squared row norms,
    c: [K, d], p0: [K] float32. The GEMM tiles of rows 0..r-1 are written straight into
    ``cache`` [r, K] (r <= n, optional; the kernel's refresh cache, see assign.h).
    ``select_threads``: OpenMP threads of the CPU selection (0: the OpenMP default, which
    torch_threads also sets)."""
    n, k = x.shape[0], c.shape[0]
    if n == 0:
        return
    mk = min(m, k)
    priced = bool((p0 != 0).any()) and mk < k
    # Ranking a row needs only ||c||^2 + p0 - 2 x.c (||x||^2 is constant along the row), so
    # the [tile, K] work is one GEMM with that bias and one selection; ||x||^2 is added to
    # the m kept values only. (A cache exists only for partial lists, mk < K, where the
    # bias holds p0 whenever p0 is not all zero: the kernel subtracts price0 from it.)
    bias = (c * c).sum(1) + p0 if priced else (c * c).sum(1)  # [K]
    tile = max(1, _TILE_FLOATS // max(k, 1))
    r = 0 if cache is None else cache.shape[0]
    # Tiles never straddle the end of the cached rows, so a cached tile is a cache slice.
    starts = [*range(0, r, tile), *range(r, n, tile)]
    ct = c.t()
    for i0 in starts:
        i1 = min(i0 + tile, r if i0 < r else n)
        xt = x[i0:i1]
        if i0 < r:
            part = torch.addmm(bias, xt, ct, beta=1.0, alpha=-2.0, out=cache[i0:i1])  # type: ignore[index]
        else:
            part = torch.addmm(bias, xt, ct, beta=1.0, alpha=-2.0)  # [tile, K]
        if x.device.type == "cpu":  # one fused C++ pass: top-m and exact distances
            ci, cd = cand_idx[i0:i1], cand_dist[i0:i1]
            _C.select_candidates_cpu(
                part.data_ptr(), part.shape[0], k, xn[i0:i1].data_ptr(), p0.data_ptr() if priced else 0, mk,
                ci.data_ptr(), cd.data_ptr(), cand_idx.stride(0), select_threads,
            )
            continue
        if mk == k and k <= 1:
            vals, idx = part, torch.zeros_like(part, dtype=torch.int64)
        else:
            vals, idx = torch.topk(part, mk, dim=1, largest=False, sorted=False)
        if priced:
            vals = vals - p0[idx]
        # Squared distances, clamped at 0 against round-off.
        vals = (vals + xn[i0:i1, None]).clamp_(min=0.0)
        cand_dist[i0:i1, :mk] = vals
        cand_idx[i0:i1, :mk] = idx.to(torch.int32)


def _candidates_complete(
    x: torch.Tensor, o: list[int], c: torch.Tensor, co: list[int], m: int,
    cand_idx: torch.Tensor, cand_dist: torch.Tensor,
) -> None:
    """Many segments, each with K_s <= m clusters (GAOQ levels): every row's list is all of
    its segment's clusters. Rows are contiguous per segment and so are their centroids, so a
    tile of rows needs one GEMM against one contiguous centroid range; each row then gathers
    its own K_s columns. Tiles are sized so rows x centroid range stays within budget."""
    import bisect

    n, dev = x.shape[0], x.device
    seg_n = torch.tensor([o[s + 1] - o[s] for s in range(len(o) - 1)])
    seg_of_row = torch.repeat_interleave(torch.arange(len(o) - 1), seg_n)
    cof = torch.tensor(co)
    k0_row = cof[:-1][seg_of_row].to(dev)
    kn_row = (cof[1:] - cof[:-1])[seg_of_row].to(dev)
    cn = (c * c).sum(1)
    ar = torch.arange(m, device=dev)
    i0 = 0
    while i0 < n:
        t = min(n - i0, 4096)
        while True:
            sa = bisect.bisect_right(o, i0) - 1
            sb = bisect.bisect_right(o, i0 + t - 1) - 1
            kr0, kr1 = co[sa], co[sb + 1]
            if t * (kr1 - kr0) <= _TILE_FLOATS or t == 1:
                break
            t = max(1, t // 2)
        xt = x[i0 : i0 + t]
        dist = torch.addmm(cn[kr0:kr1], xt, c[kr0:kr1].t(), beta=1.0, alpha=-2.0)
        dist += (xt * xt).sum(1, keepdim=True)
        dist.clamp_(min=0.0)
        valid = ar[None, :] < kn_row[i0 : i0 + t, None]
        cols = ((k0_row[i0 : i0 + t] - kr0)[:, None] + ar[None, :]).clamp_(max=max(kr1 - kr0 - 1, 0))
        vals = torch.gather(dist, 1, cols) if kr1 > kr0 else torch.zeros((t, m), device=dev)
        cand_dist[i0 : i0 + t] = torch.where(valid, vals, torch.zeros_like(vals))
        cand_idx[i0 : i0 + t] = torch.where(valid, ar[None, :].expand(t, m), torch.full_like(cols, -1)).to(torch.int32)
        i0 += t


#: Override of the refresh-cache budget in floats (None: max(min(2*N*d, 8*N*m), 4M)); tests
#: use it to exercise partly cached and uncached solves.
_CACHE_BUDGET_FLOATS: int | None = None


def _cache_layout(seg_n: torch.Tensor, seg_k: torch.Tensor, m: int, d: int) -> torch.Tensor:
    """Distance cache for refreshed points (assign.h; the GEMM tiles are written into it):
    segments whose lists are partial (K_s > m) get rows of K_s floats in proportion to their
    size, within a budget of max(min(2*N*d, 8*N*m), 4M) floats: never N x K, and the
    solve's extra memory stays O(N*m + K*d) (lists, cache, heaps) beside x. At d <= 4m (m = 32:
    d <= 128) that is the 2*N*d of earlier sessions; it caches every point up to K = 256 at any
    d, and a quarter of them at 10M x 128, K = 1024 (10 GB of the 24 GB machine).
    Returns cache_offsets [S+1] int64 (CPU): float offsets of each segment's rows."""
    n_tot, d = int(seg_n.sum()), max(d, 1)
    budget = max(min(2 * n_tot * d, 8 * n_tot * m), 1 << 22) if _CACHE_BUDGET_FLOATS is None else _CACHE_BUDGET_FLOATS
    partial = seg_k > m
    want = torch.where(partial, seg_n * seg_k, torch.zeros_like(seg_n))  # every point cached
    total_want = int(want.sum())
    if total_want > budget:
        rows = (seg_n.double() * budget / max(n_tot, 1) / seg_k.clamp(min=1).double()).floor().long()
        want = torch.where(partial, torch.minimum(rows, seg_n) * seg_k, torch.zeros_like(seg_n))
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(want, 0)])


def _layout(
    ws: SolveWorkspace, capacity: torch.Tensor, seg_n: torch.Tensor, seg_k: torch.Tensor, ol: list[int], mm: int,
    d: int, device: torch.device,
) -> dict:
    """What a solve's workspaces look like given its segments and capacities (the same for
    every solve of a Lloyd run, so computed once per workspace): the distance cache's
    layout and row of each point, and the bid heaps' offsets."""
    key = (tuple(ol), tuple(seg_k.tolist()), mm, d, str(device), capacity.data_ptr(), capacity._version)
    if ws.layout is not None and ws.layout[0] == key:
        return ws.layout[1]
    n = ol[-1]
    cache_offsets = _cache_layout(seg_n, seg_k, mm, d)
    cache_rows = ((cache_offsets[1:] - cache_offsets[:-1]) // seg_k.clamp(min=1)).tolist()
    cache_slot = torch.full((max(n, 1),), -1, dtype=torch.int32)
    for s, r in enumerate(cache_rows):
        if r > 0:  # cached rows: the first r points of the segment
            cache_slot[ol[s] : ol[s] + r] = torch.arange(r, dtype=torch.int32)
    # Heap slots: cluster k is bounded (needs a heap of cap_k bids) iff cap_k < its segment's N.
    n_of_cluster = torch.repeat_interleave(seg_n, seg_k).to(device)
    slots = torch.where(capacity < n_of_cluster, capacity, torch.zeros_like(capacity))
    heap_offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(slots, 0)])
    lay = {
        "cache_offsets": cache_offsets.to(device), "cache_rows": cache_rows, "cao": cache_offsets.tolist(),
        "cache_slot": cache_slot.to(device), "heap_offsets": heap_offsets, "h": int(heap_offsets[-1]),
    }
    ws.layout = (key, lay)
    return lay


#: Cold starts estimate prices on a sample of this many points per cluster (see _estimate_prices).
_PRICE_SAMPLE_PER_CLUSTER = 16


def _proportional(cap: torch.Tensor, total: int) -> torch.Tensor:
    """Integer capacities proportional to ``cap`` summing to exactly ``total`` (largest
    remainders), so the sampled problem has no slack (slack makes the auction slower)."""
    share = cap.double() * total / float(cap.sum())
    out = share.floor().to(torch.int64)
    short = total - int(out.sum())
    if short > 0:
        order = torch.argsort(share - out.double(), descending=True, stable=True)
        out[order[:short].to(out.device)] += 1
    return out


def _estimate_prices(
    x: torch.Tensor, o: list[int], c: torch.Tensor, co: list[int], capacity: torch.Tensor, mm: int,
) -> torch.Tensor | None:
    """Cold-start prices [K] from a balanced assignment of a seeded sample (complete lists).

    The transportation dual prices are in distance units and barely depend on the sample
    size, so candidate lists ranked by d + these prices hold almost every point's final
    cluster: far fewer points need exact bidding. None when no segment would benefit.
    """
    gen = torch.Generator().manual_seed(0)  # fixed: the solve stays deterministic
    rows, s_off, s_cap = [], [0], []
    used = False
    for s in range(len(o) - 1):
        n_s, k_s = o[s + 1] - o[s], co[s + 1] - co[s]
        p_s = _PRICE_SAMPLE_PER_CLUSTER * k_s
        cap_s = capacity[co[s] : co[s + 1]]
        if k_s > mm and n_s > 2 * p_s:
            pick = torch.randperm(n_s, generator=gen)[:p_s].to(x.device) + o[s]
            rows.append(pick)
            s_cap.append(_proportional(cap_s, p_s))
            used = True
        else:
            s_cap.append(torch.zeros_like(cap_s))
            p_s = 0
        s_off.append(s_off[-1] + p_s)
    if not used:
        return None
    xs = x[torch.cat(rows)]
    dev = x.device
    offs = torch.tensor(s_off, dtype=torch.int64, device=dev)
    cof = torch.tensor(co, dtype=torch.int64, device=dev)
    k_max = max(co[s + 1] - co[s] for s in range(len(co) - 1))
    zeros = torch.zeros(c.shape[0], dtype=torch.float32, device=dev)
    _, prices = _solve("estimate", xs, offs, c, cof, torch.cat(s_cap), zeros, m=k_max, cold=True)
    return prices


def _solve(
    fn: str,
    x: torch.Tensor,
    offsets: torch.Tensor,
    centroids: torch.Tensor,
    centroid_offsets: torch.Tensor,
    capacity: torch.Tensor,
    prices: torch.Tensor | None = None,
    m: int = DEFAULT_CANDIDATES,
    stats: dict | None = None,
    cold: bool = False,
    init_labels: torch.Tensor | None = None,
    eps_div: float = FINE_EPS_DIV,
    ws: SolveWorkspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated inputs -> (labels [N] int64, prices [K] float32).

    ``prices`` (float32 [K], optional) seeds the reserve prices (a previous call's, or else
    estimated on a sample). With ``init_labels`` too ([N] int64, the labels that call
    returned, same capacities), the solve is warm: points whose cluster is still nearly their
    best at those prices keep it and only the others bid (a Lloyd step moves centroids little).
    ``cold`` forces a cold start. ``eps_div`` sets the final eps to (mean nearest distance) /
    eps_div: the cost is within N * eps of the optimum. ``ws``: buffers to reuse (the same x,
    segments and capacities in every solve that passes it, as in a Lloyd run). Deterministic.
    """
    device = x.device
    if device.type == "cuda":
        require_cuda_kernels(fn, device)
    n, d = x.shape
    k = centroids.shape[0]
    o, co = offsets.cpu(), centroid_offsets.cpu()
    seg_k = co[1:] - co[:-1]
    seg_n = o[1:] - o[:-1]
    S = int(seg_n.numel())
    mm = max(1, min(m, int(seg_k.max()) if S > 0 else 1))
    ol, col = o.tolist(), co.tolist()
    # float32 copies only when needed (bf16/fp16 or non-contiguous input).
    x32 = x.to(torch.float32).contiguous()
    c32 = centroids.to(torch.float32).contiguous()
    warm = init_labels is not None and prices is not None and not cold
    with torch_threads(solve_threads(device, S, n * k * d)):
        return _solve_body(x, offsets, centroids, centroid_offsets, capacity, prices, stats, ol, col, seg_n,
                           seg_k, S, mm, x32, c32, init_labels if warm else None, eps_div,
                           SolveWorkspace() if ws is None else ws)


def _solve_body(
    x: torch.Tensor, offsets: torch.Tensor, centroids: torch.Tensor, centroid_offsets: torch.Tensor,
    capacity: torch.Tensor, prices: torch.Tensor | None, stats: dict | None, ol: list[int], col: list[int],
    seg_n: torch.Tensor, seg_k: torch.Tensor, S: int, mm: int, x32: torch.Tensor, c32: torch.Tensor,
    init_labels: torch.Tensor | None, eps_div: float, ws: SolveWorkspace,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of _solve (candidates, workspaces, kernel call); same arguments, validated."""
    device = x.device
    n, d = x.shape
    k = centroids.shape[0]
    if prices is None:
        prices = _estimate_prices(x32, ol, c32, col, capacity, mm)
    if prices is None:
        price0 = torch.zeros(max(k, 1), dtype=torch.float32, device=device)
    else:
        price0 = prices.to(device=device, dtype=torch.float32).clamp(min=0).contiguous()
    cand_idx = ws.buffer("cand_idx", n * mm, torch.int32, device).view(n, mm).fill_(-1)
    cand_dist = ws.buffer("cand_dist", n * mm, torch.float32, device).view(n, mm).zero_()
    # The auction's device: the GPU kernel runs one segment per GPU thread, so with few
    # segments the candidates stay on the GPU and the auction runs on the host (auction_device).
    adev = auction_device(device, S)
    if adev != device:
        capacity = ws.host_copy("capacity", capacity)
    lay = _layout(ws, capacity, seg_n, seg_k, ol, mm, d, adev)
    cache_offsets, cache_rows, cao = lay["cache_offsets"], lay["cache_rows"], lay["cao"]
    dist_cache = ws.buffer("dist_cache", max(cao[-1], 1), torch.float32, device)
    cache_slot, heap_offsets, h = lay["cache_slot"], lay["heap_offsets"], lay["h"]
    # ||x||^2 per row: added to the kept candidates, and by the kernel to cached rows. Complete
    # lists (every segment's K_s <= m) have no cache and add it tile by tile themselves.
    row_norm = torch.zeros(1, dtype=torch.float32, device=device)
    if S > 1 and int(seg_k.max()) <= mm:
        _candidates_complete(x32, ol, c32, col, mm, cand_idx, cand_dist)
    else:
        if n > 0:
            if ws.row_norm is None:
                ws.row_norm = row_sq_norms(x32)
            row_norm = ws.row_norm

        def segment_candidates(s: int, select_threads: int) -> None:
            if ol[s + 1] <= ol[s]:
                return
            r = cache_rows[s]  # pre-filled cache rows: the first r points of the segment
            cache = dist_cache[cao[s] : cao[s + 1]].view(r, col[s + 1] - col[s]) if r > 0 else None
            _candidates(
                x32[ol[s] : ol[s + 1]], row_norm[ol[s] : ol[s + 1]], c32[col[s] : col[s + 1]],
                price0[col[s] : col[s + 1]], mm, cand_idx[ol[s] : ol[s + 1]], cand_dist[ol[s] : ol[s + 1]], cache,
                select_threads,
            )

        workers = caller_threads()
        if device.type == "cpu" and S > 1 and workers > 1 and n * k * d // (S * S) >= _SEGMENT_POOL_MACS:
            # Many segments: a pool of single-threaded workers, one segment at a time each
            # (multi-threaded ops on [4k, 256] tiles pay a barrier per op, see torch_threads;
            # independent workers do not wait on each other). Each segment's lists depend only
            # on its own rows, so the result does not depend on the schedule.
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda s: segment_candidates(s, 1), range(S)))
        else:
            # The selection runs on the caller's thread count even where torch was held to one
            # thread for this solve (solve_threads): one OpenMP region per tile is not the
            # many small ops that a busy core slows down (10k x 128, K=64, 20 iterations: 171
            # -> ~150 ms on 2 idle cores, 212 -> 195 ms with one core busy).
            for s in range(S):
                segment_candidates(s, workers)
    if adev != device:  # the kernel's inputs to the host (x once per workspace)
        offsets, centroid_offsets = offsets.to(adev), centroid_offsets.to(adev)
        cand_idx, cand_dist = _to_host(ws, "cand_idx", cand_idx), _to_host(ws, "cand_dist", cand_dist)
        dist_cache, row_norm = _to_host(ws, "dist_cache", dist_cache), row_norm.to(adev)
        price0, c32 = price0.to(adev), c32.to(adev)
        x32 = ws.host_copy("x", x32)
    heap_bid = ws.buffer("heap_bid", max(h, 1), torch.float32, adev)
    heap_pt = ws.buffer("heap_pt", max(h, 1), torch.int32, adev)
    count = torch.zeros(max(k, 1), dtype=torch.int64, device=adev)
    price = price0.clone()
    dropped = torch.zeros(max(k, 1), dtype=torch.uint8, device=adev)
    stack = ws.buffer("stack", max(n, 1), torch.int32, adev)
    exact = ws.buffer("exact", max(n, 1), torch.uint8, adev)
    bound = ws.buffer("bound", max(n, 1), torch.float32, adev)
    warm = init_labels is not None
    # Warm: the kernel reads the initial labels from its output array (assign.h).
    labels = init_labels.to(device=adev, dtype=torch.int64).clone() if warm else torch.empty(n, dtype=torch.int64, device=adev)
    cur_price = torch.empty_like(price)  # kernel workspace: live cluster prices
    sel_val = torch.empty_like(price)  # kernel workspaces: list-refresh selection
    sel_idx = torch.empty(max(k, 1), dtype=torch.int32, device=adev)
    tensors = (
        offsets, centroid_offsets, cand_idx, cand_dist, price0, capacity, x32, c32, heap_offsets, heap_bid, heap_pt,
        count, price, dropped, stack, exact, bound, labels, cache_offsets, dist_cache, cache_slot, cur_price,
        row_norm, sel_val, sel_idx,
    )
    wrong = [i for i, t in enumerate(tensors) if t.device != adev]
    if wrong:  # the kernel takes raw pointers: a tensor on the other device would crash it
        raise RuntimeError(f"balanced assignment: internal error, kernel arguments {wrong} are not on {adev}")
    args = (S, d, mm, int(warm), float(eps_div), *(t.data_ptr() for t in tensors))
    if adev.type == "cuda":
        _C.balanced_assign_cuda(*args, cuda_stream(adev))
    else:
        # Segments in parallel on the caller's threads: torch_threads(1) above (small torch
        # ops) also lowered OpenMP's default, which had run GAOQ level 2's 256 independent
        # auctions on one thread (1M x 128 level 2: auctions 11.1 -> 5.6 s, same labels).
        _C.balanced_assign_cpu(*args, caller_threads())
    if stats is not None:
        stats["refreshed_points"] = int(exact[:n].sum())
    return labels.to(device), price[:k].to(device)


def _to_host(ws: SolveWorkspace, name: str, t: torch.Tensor) -> torch.Tensor:
    """A host copy of ``t`` in the workspace's buffer ``host_<name>``."""
    return ws.buffer("host_" + name, t.numel(), t.dtype, torch.device("cpu")).view(t.shape).copy_(t)
