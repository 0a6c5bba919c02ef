"""Balanced k-means vs faiss-cpu Kmeans (unbalanced) and k-means-constrained (exact balance).

Prints one JSON line per (config, tool) on stdout; progress on stderr. Data: a Gaussian
mixture with Zipf(1.2) component weights (dense blobs hold most points), so unbalanced
k-means gives very uneven clusters. Every line carries its correctness fields: the total
squared distance (``cost``) and ``max_over_mean`` (largest cluster / N/K).

    python bench/kmeans.py            # full grid (slow: run once)
    python bench/kmeans.py --quick    # small smoke grid
    python bench/kmeans.py --embeddings runs/quick/famae/embeddings --k 17 --k 64
                                      # real item embeddings (an embedding folder written by
                                      # `resid famae`, `resid run` or `resid embed-text`):
                                      # resid, faiss and k-means-constrained on the same rows
faiss is run with max_points_per_centroid = N so it trains on all N points, like resid.
Every tool is timed alike: a run is repeated until the runs add up to MIN_TOTAL_SECONDS (at
most MAX_RUNS runs) and ``seconds`` is their median (``runs`` says how many). A single run of
a fraction of a second mostly measures first-call costs and scheduler noise (the 10k x 128
resid run read 0.137-0.172 s in one session); a run of several seconds is timed once.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _jsonl import emit, progress  # noqa: E402

from resid.kmeans import balanced_kmeans  # noqa: E402


def skewed_mixture(n: int, d: int, components: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = 1.0 / torch.arange(1, components + 1, dtype=torch.float64) ** 1.2
    comp = torch.multinomial(w / w.sum(), n, replacement=True, generator=g)
    means = torch.randn(components, d, generator=g)
    return (means[comp] + 0.3 * torch.randn(n, d, generator=g)).float()


def stats(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor, k: int) -> dict:
    sizes = torch.bincount(labels, minlength=k).double()
    cost = float(((x.double() - c.double()[labels]) ** 2).sum())
    return {"cost": cost, "max_over_mean": round(float(sizes.max() / sizes.mean()), 4)}


MIN_TOTAL_SECONDS = 2.0
MAX_RUNS = 7


def timed(runner: Callable[[torch.Tensor, int, int], tuple[float, dict]], x: torch.Tensor, k: int,
          iters: int) -> tuple[float, dict, int]:
    """(median seconds, stats of the last run, number of runs): see the module docstring."""
    secs = []
    while True:
        sec, st = runner(x, k, iters)
        secs.append(sec)
        if sum(secs) >= MIN_TOTAL_SECONDS or len(secs) >= MAX_RUNS:
            return statistics.median(secs), st, len(secs)


def run_resid(x: torch.Tensor, k: int, iters: int) -> tuple[float, dict]:
    t = time.perf_counter()
    c, labels = balanced_kmeans(x, k, iters=iters, seed=0)
    return time.perf_counter() - t, stats(x, c, labels, k)


def run_resid_cuda(x: torch.Tensor, k: int, iters: int) -> tuple[float, dict]:
    """balanced_kmeans on the GPU; the host-to-device copy of x is outside the timing."""
    xc = x.cuda()
    torch.cuda.synchronize()
    t = time.perf_counter()
    c, labels = balanced_kmeans(xc, k, iters=iters, seed=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t, stats(x, c.cpu(), labels.cpu(), k)


def run_torch_lloyd_cuda(x: torch.Tensor, k: int, iters: int) -> tuple[float, dict]:
    """Plain (unbalanced) Lloyd k-means in torch on the GPU, the same iterations, seeded from
    k random rows: the GPU reference for what one k-means iteration costs (no faiss-gpu here)."""
    xc = x.cuda()
    g = torch.Generator().manual_seed(0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    c = xc[torch.randperm(xc.shape[0], generator=g)[:k].cuda()].clone()
    xn = (xc * xc).sum(1)
    for it in range(iters + 1):
        labels = torch.empty(xc.shape[0], dtype=torch.int64, device=xc.device)
        for s in range(0, xc.shape[0], 1 << 18):  # [256k, K] distance tiles
            xs = xc[s : s + (1 << 18)]
            labels[s : s + xs.shape[0]] = (xn[s : s + xs.shape[0], None] - 2 * xs @ c.T + (c * c).sum(1)).argmin(1)
        if it == iters:
            break
        sums = torch.zeros_like(c).index_add_(0, labels, xc)
        cnt = torch.bincount(labels, minlength=k).to(c.dtype)
        c = torch.where(cnt[:, None] > 0, sums / cnt.clamp(min=1)[:, None], c)
    torch.cuda.synchronize()
    return time.perf_counter() - t, stats(x, c.cpu(), labels.cpu(), k)


def run_faiss(x: torch.Tensor, k: int, iters: int) -> tuple[float, dict]:
    import faiss

    xn = x.numpy()
    t = time.perf_counter()
    km = faiss.Kmeans(xn.shape[1], k, niter=iters, seed=0, max_points_per_centroid=xn.shape[0], verbose=False)
    km.train(xn)
    _, lab = km.index.search(xn, 1)
    sec = time.perf_counter() - t
    return sec, stats(x, torch.from_numpy(km.centroids), torch.from_numpy(lab[:, 0].astype(np.int64)), k)


def run_constrained(x: torch.Tensor, k: int, iters: int) -> tuple[float, dict]:
    from k_means_constrained import KMeansConstrained

    n = x.shape[0]
    t = time.perf_counter()
    km = KMeansConstrained(n_clusters=k, size_min=n // k, size_max=-(-n // k), max_iter=iters,
                           n_init=1, random_state=0)
    lab = km.fit_predict(x.numpy().astype(np.float64))
    sec = time.perf_counter() - t
    return sec, stats(x, torch.from_numpy(km.cluster_centers_).float(), torch.from_numpy(lab.astype(np.int64)), k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke grid")
    ap.add_argument("--only", type=int, default=None, help="run only this index of the full grid")
    ap.add_argument("--config", action="append", default=[], metavar="N,D,K,ITERS",
                    help="run resid vs faiss on this config instead of the grid (repeatable)")
    ap.add_argument("--embeddings", metavar="DIR", default=None,
                    help="cluster the rows of this embedding folder (real data) instead of the synthetic grid")
    ap.add_argument("--k", type=int, action="append", default=[],
                    help="with --embeddings: cluster count (repeatable; default 64)")
    ap.add_argument("--iters", type=int, default=20, help="with --embeddings: Lloyd iterations (default 20)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: add resid on the GPU and a plain torch Lloyd on the GPU (unbalanced) to every config")
    args = ap.parse_args()
    if args.quick:
        grid = [(20000, 64, 64, 10, ("resid", "faiss")), (2000, 32, 16, 10, ("resid", "k-means-constrained"))]
    else:
        grid = [
            (1_000_000, 128, 256, 20, ("resid", "faiss")),
            (100_000, 640, 256, 20, ("resid", "faiss")),
            (10_000, 128, 64, 20, ("resid", "k-means-constrained")),
        ]
    if args.only is not None:
        grid = [grid[args.only]]
    if args.config:
        grid = []
        for spec in args.config:
            try:
                n, d, k, iters = (int(v) for v in spec.split(","))
            except ValueError:
                ap.error(f"--config: expected N,D,K,ITERS integers, got {spec!r}")
            grid.append((n, d, k, iters, ("resid", "faiss")))
    data = {}  # (n, d) -> real rows; the grid's other configs use the synthetic mixture
    if args.embeddings is not None:
        if args.config or args.quick or args.only is not None:
            ap.error("--embeddings replaces the grid: drop --config / --quick / --only")
        from resid.io import load_embeddings

        _, emb, meta = load_embeddings(args.embeddings, mmap=False)
        real = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        n, d = real.shape
        ks = args.k or [64]
        bad = [k for k in ks if not 1 <= k <= n]
        if bad:
            ap.error(f"--k {bad}: must be between 1 and the {n} rows of {args.embeddings}")
        data[(n, d)] = (real, f"{meta.get('source', 'embeddings')}:{meta.get('dataset', args.embeddings)}")
        grid = [(n, d, k, args.iters, ("resid", "faiss", "k-means-constrained")) for k in ks]
    elif args.k:
        ap.error("--k needs --embeddings (the synthetic grid sets its own K)")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device")
        grid = [(n, d, k, iters, (*tools, "resid-cuda", "torch-lloyd-cuda")) for n, d, k, iters, tools in grid]
    runners = {"resid": run_resid, "faiss": run_faiss, "k-means-constrained": run_constrained,
               "resid-cuda": run_resid_cuda, "torch-lloyd-cuda": run_torch_lloyd_cuda}
    threads = torch.get_num_threads()
    for n, d, k, iters, tools in grid:
        x, source = data.get((n, d), (None, "skewed-mixture"))
        if x is None:
            x = skewed_mixture(n, d, 4 * k, seed=0)
        base = None
        for tool in tools:
            progress(f"[bench kmeans] n={n} d={d} k={k} iters={iters} tool={tool}")
            try:
                sec, st, runs = timed(runners[tool], x, k, iters)
            except Exception as e:  # a peer failing is recorded, not fatal
                sec, runs = float("nan"), 0
                st = {"cost": float("nan"), "max_over_mean": float("nan"), "error": repr(e)}
            rec = {"bench": "kmeans", "data": source, "tool": tool, "n": n, "d": d, "k": k, "iters": iters,
                   "threads": threads, "seconds": round(sec, 3), "runs": runs, **st}
            if base is None:
                base = rec
            else:
                rec["resid_time_ratio"] = round(base["seconds"] / sec, 3) if sec == sec else None
                rec["resid_cost_ratio"] = round(base["cost"] / st["cost"], 5) if st["cost"] == st["cost"] else None
            emit(rec)


if __name__ == "__main__":
    main()
