"""GAOQ on synthetic clustered embeddings vs faiss-cpu k-means doing the same clustering work.

For each config (N, d) this prints one JSON line per tool on stdout (progress on stderr):

- ``resid-gaoq``: ``GAOQ(branching=(b1, b2)).fit`` -> SIDs [N, 3] (balanced k-means on all items,
  balanced k-means inside each of the b1 parents in one segmented call, Hungarian alignment,
  last-level disambiguation). Correctness fields: ``unique_sids``, ``max_minus_min`` (largest
  cluster-size spread at level 1 and inside any parent at level 2), ``last_size``.
- ``faiss-cpu``: the same two-level clustering with ``faiss.Kmeans`` (unbalanced): k=b1 on all
  N points, then k=b2 inside each parent; every point used (no subsampling), same iterations.
  Correctness field: ``max_over_mean`` of the cluster sizes (1.0 = balanced).

Each tool runs in its own subprocess on the same data file, so ``peak_rss_gb`` (VmHWM) is that
tool's own peak (it includes the [N, d] float32 input). ``ratio`` = resid seconds / faiss seconds.

    python bench/quantize.py                # 1M x 128 (and 1M x 640 with --big)
    python bench/quantize.py --quick        # 100k x 64, b = (64, 64)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_data(path: Path, n: int, d: int, clusters: int, seed: int) -> None:
    """Gaussian mixture: ``clusters`` centres ~ N(0, 1), items = centre + N(0, 0.35^2) noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    z = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for lo in range(0, n, 1 << 17):
        hi = min(n, lo + (1 << 17))
        lab = rng.integers(0, clusters, hi - lo)
        z[lo:hi] = centres[lab] + 0.35 * rng.standard_normal((hi - lo, d), dtype=np.float32)
    z.flush()
    del z


def vm_hwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def worker_gaoq(z: np.ndarray, b: tuple[int, int], iters: int) -> dict:
    from resid.gaoq import GAOQ

    q = GAOQ(branching=b, iters=iters, seed=0)
    t0 = time.perf_counter()
    codes = q.fit(z)
    sec = time.perf_counter() - t0
    t = q.tree
    spread = [int(t.sizes[0].max() - t.sizes[0].min())]
    kids = t.sizes[1].reshape(b[0], b[1])
    spread.append(int((kids.max(1) - kids.min(1)).max()))
    return {"seconds": round(sec, 2), "unique_sids": bool(len(np.unique(codes, axis=0)) == len(z)),
            "max_minus_min": spread, "last_size": q.fit_info["last_size"], "level_seconds": q.fit_info["level_seconds"],
            "align_seconds": q.fit_info.get("align_seconds"), "anchor_max_cos": [round(c, 4) for c in q.fit_info["anchor_max_cos"]]}


def worker_faiss(z: np.ndarray, b: tuple[int, int], iters: int) -> dict:
    import faiss

    n, d = z.shape
    t0 = time.perf_counter()
    km = faiss.Kmeans(d, b[0], niter=iters, seed=0, max_points_per_centroid=n, verbose=False)
    km.train(z)
    _, lab = km.index.search(z, 1)
    lab = lab[:, 0]
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=b[0]))])
    worst = 1.0
    for p in range(b[0]):
        rows = z[order[bounds[p]:bounds[p + 1]]]
        if len(rows) < b[1]:
            continue
        sub = faiss.Kmeans(d, b[1], niter=iters, seed=p, max_points_per_centroid=len(rows), verbose=False)
        sub.train(rows)
        _, sl = sub.index.search(rows, 1)
        cnt = np.bincount(sl[:, 0], minlength=b[1])
        worst = max(worst, float(cnt.max() / cnt.mean()))
    sec = time.perf_counter() - t0
    top = np.bincount(lab, minlength=b[0])
    return {"seconds": round(sec, 2), "max_over_mean": [round(float(top.max() / top.mean()), 3), round(worst, 3)]}


def run_worker(args: argparse.Namespace) -> None:
    z = np.load(args.data)  # in memory: both tools pay the same [N, d] float32
    b = tuple(int(v) for v in args.branching.split(","))
    out = (worker_gaoq if args.worker == "resid-gaoq" else worker_faiss)(z, b, args.iters)  # type: ignore[arg-type]
    out["peak_rss_gb"] = round(vm_hwm_gb(), 3)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k x 64, b = (64, 64): a smoke run")
    ap.add_argument("--big", action="store_true", help="also 1M x 640")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--config", action="append", default=[], metavar="N,D,B1,B2",
                    help="run this config instead of the defaults (repeatable), e.g. 200000,64,128,128")
    ap.add_argument("--worker", choices=["resid-gaoq", "faiss-cpu"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--branching", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(args)
        return
    configs = [(100_000, 64, (64, 64))] if args.quick else [(1_000_000, 128, (256, 256))] + ([(1_000_000, 640, (256, 256))] if args.big else [])
    if args.config:
        configs = []
        for text in args.config:
            n, d, b1, b2 = (int(v) for v in text.split(","))
            configs.append((n, d, (b1, b2)))
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'python'}:{ROOT}"}
    with tempfile.TemporaryDirectory(prefix="resid-bench-") as tmp:
        for n, d, b in configs:
            path = Path(tmp) / f"z_{n}_{d}.npy"
            print(f"[bench] generating {n} x {d}", file=sys.stderr)
            make_data(path, n, d, clusters=4096, seed=0)
            results = {}
            for tool in ("resid-gaoq", "faiss-cpu"):
                print(f"[bench] {tool} n={n} d={d} b={b}", file=sys.stderr)
                cmd = [sys.executable, __file__, "--worker", tool, "--data", str(path),
                       "--branching", ",".join(map(str, b)), "--iters", str(args.iters)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                sys.stderr.write(proc.stderr[-2000:])
                try:
                    results[tool] = json.loads(proc.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    results[tool] = {"seconds": float("nan"), "error": f"exit {proc.returncode}"}
            base = results["faiss-cpu"].get("seconds", float("nan"))
            for tool, res in results.items():
                line = {"bench": "quantize", "tool": tool, "n": n, "d": d, "branching": list(b) + ["auto"],
                        "iters": args.iters, "threads": threads, **res}
                if tool == "resid-gaoq":
                    line["ratio_vs_faiss"] = round(res["seconds"] / base, 3) if base == base and base else None
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
