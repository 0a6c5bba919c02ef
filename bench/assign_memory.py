"""Peak memory of one large balanced assignment (issue: "10M x 128 with K = 1024 fits in 24 GiB").

Generates N x D float32 points (the Zipf-weighted Gaussian mixture of bench/kmeans.py, made
in chunks so that generating them costs little beyond x itself), takes K of them as
centroids, and times one ``resid_ext.balanced_assign`` call. Prints one JSON line: the
seconds, the input size, the process's resident memory before the call and its peak
(``ru_maxrss``), the difference (what the solve added beside x), the N x K float32 matrix the
solve never forms, and the correctness fields (largest cluster / N/K, capacity respected).

    OMP_NUM_THREADS=2 python bench/assign_memory.py                    # 10M x 128, K = 1024
    OMP_NUM_THREADS=2 python bench/assign_memory.py --n 1000000 --k 256
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _jsonl import emit, progress  # noqa: E402

import resid_ext  # noqa: E402

GIB = float(1 << 30)


def rss_now_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def mixture_in_chunks(n: int, d: int, components: int, seed: int, chunk: int = 1 << 20) -> torch.Tensor:
    """bench/kmeans.py's skewed mixture (Zipf(1.2) component weights, 0.3 noise), written
    chunk by chunk into one [n, d] tensor so the temporaries stay ~chunk x d."""
    g = torch.Generator().manual_seed(seed)
    w = 1.0 / torch.arange(1, components + 1, dtype=torch.float64) ** 1.2
    means = torch.randn(components, d, generator=g)
    x = torch.empty(n, d)
    for s in range(0, n, chunk):
        t = min(chunk, n - s)
        comp = torch.multinomial(w / w.sum(), t, replacement=True, generator=g)
        x[s : s + t] = means[comp] + 0.3 * torch.randn(t, d, generator=g)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (1 <= args.k <= args.n) or args.d < 1:
        ap.error(f"need 1 <= k <= n and d >= 1, got n={args.n} d={args.d} k={args.k}")
    progress(f"[bench assign_memory] generating {args.n} x {args.d} ({args.n * args.d * 4 / GIB:.2f} GiB)")
    x = mixture_in_chunks(args.n, args.d, 4 * args.k, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    centroids = x[torch.randperm(args.n, generator=g)[: args.k]].clone()
    rss_before, peak_before = rss_now_bytes(), peak_rss_bytes()
    progress(f"[bench assign_memory] balanced_assign, K={args.k} (RSS before {rss_before / GIB:.2f} GiB)")
    t = time.perf_counter()
    labels = resid_ext.balanced_assign(x, centroids)
    sec = time.perf_counter() - t
    peak = peak_rss_bytes()
    sizes = torch.bincount(labels, minlength=args.k)
    cap = resid_ext.default_capacity(args.n, args.k)
    emit({
        "bench": "assign_memory", "tool": "resid", "n": args.n, "d": args.d, "k": args.k,
        "threads": torch.get_num_threads(), "seconds": round(sec, 1),
        "input_gib": round(args.n * args.d * 4 / GIB, 2),
        "rss_before_gib": round(rss_before / GIB, 2),
        "peak_rss_gib": round(peak / GIB, 2),
        # The generation's own peak is below the solve's when this is positive (see docstring).
        "solve_extra_gib": round((peak - rss_before) / GIB, 2) if peak > peak_before else None,
        "n_x_k_matrix_gib": round(args.n * args.k * 4 / GIB, 1),
        "max_over_mean": round(float(sizes.max()) * args.k / args.n, 4),
        "within_capacity": bool((sizes <= cap).all()),
    })


if __name__ == "__main__":
    main()
