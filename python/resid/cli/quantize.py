"""`resid quantize EMBEDDINGS OUT_DIR`: semantic IDs from an embedding folder (Q-stage).

Writes OUT_DIR/sids.parquet (item_id, c1..cL), quantize_report.json (diagnostics, see
``resid.diagnostics``), quantize_report.png (code usage per level) and quantizer.npz (the fitted
state, for ``assign``). ``--compare`` fits GAOQ, HKM and RQ-KMeans on the same embeddings and
prints their diagnostics side by side (the report gets all three; sids.parquet is --method's).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="turn item embeddings into unique semantic IDs (GAOQ, HKM or RQ-KMeans)")
    p.add_argument("embeddings", help="embedding folder (embeddings.npy + item_ids.npy, from `resid famae`)")
    p.add_argument("out_dir", help="output folder for sids.parquet, quantize_report.json/.png, quantizer.npz")
    p.add_argument("--method", choices=["gaoq", "hkm", "rqkmeans"], default="gaoq")
    p.add_argument("--branching", default="auto",
                   help="b1,b2,... for the prefix levels (a trailing 'auto' is allowed: the last level is always "
                        "auto-sized); 'auto' alone = b1*b2 ~ N/15 (paper App. G). Default: auto")
    p.add_argument("--iters", type=int, default=20, help="balanced k-means iterations per level (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anchor-basis", choices=["random", "pca"], default="random",
                   help="GAOQ anchors: seeded random orthonormal (the paper) or the principal directions of the "
                        "centred child centroids (see docs/gaoq.md for when that helps)")
    p.add_argument("--dataset", default=None, help="prepared dataset folder: adds the history/target code overlap")
    p.add_argument("--compare", action="store_true", help="also fit the other two methods and print all side by side")
    p.add_argument("--distributed", action="store_true",
                   help="GAOQ with parents split across the processes torchrun started (auto-detected under torchrun; "
                        "same SIDs as one process); rank 0 writes the files")
    p.add_argument("--level1-sample", type=int, default=None,
                   help="with --distributed: fit level-1 centroids on a seeded sample of this many rows (less memory "
                        "per rank; SIDs then differ from a one-process run, see docs/distributed.md)")
    p.set_defaults(func=run)


def parse_branching(text: str) -> tuple[int, ...] | None:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if parts and parts[-1] == "auto":
        parts = parts[:-1]
    if not parts:
        return None
    try:
        return tuple(int(t) for t in parts)
    except ValueError:
        raise ValueError(f"--branching must be integers separated by commas (optionally ending in 'auto'), got {text!r}") from None


def _overlap_inputs(dataset: str, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Test-split histories/targets of a prepared dataset, re-indexed to embedding rows."""
    from resid.data import load_prepared

    ds = load_prepared(dataset)
    row_of = {str(i): r for r, i in enumerate(item_ids)}
    missing = [str(i) for i in ds.item_ids if str(i) not in row_of]
    if missing:
        raise ValueError(f"--dataset {dataset}: {len(missing)} of its items have no embedding (e.g. {missing[:3]})")
    remap = np.array([row_of[str(i)] for i in ds.item_ids], dtype=np.int64)
    split = ds.split("test")
    hist = np.where(split.histories >= 0, remap[np.maximum(split.histories, 0)], -1)
    return hist, remap[split.targets]


def quantize(z: np.ndarray, method: str, branching: tuple[int, ...] | None, iters: int, seed: int,
             hist: np.ndarray | None, targets: np.ndarray | None, level1_sample: int | None = None,
             anchor_basis: str = "random", progress: bool = True) -> tuple[Any, np.ndarray, dict[str, Any]]:
    from resid import distributed as D
    from resid.diagnostics import quantizer_report
    from resid.quantizers import make_quantizer

    t0 = time.perf_counter()
    if method == "gaoq" and (D.is_distributed() or level1_sample is not None):  # sharded GAOQ (resid.gaoq_dist)
        from resid.gaoq_dist import fit_sharded

        q = fit_sharded(z, branching, seed=seed, iters=iters, level1_sample=level1_sample)
        codes = q.codes
    else:
        q = make_quantizer(method, branching, seed=seed, iters=iters, anchor_basis=anchor_basis, progress=progress)
        codes = q.fit(z)
    seconds = time.perf_counter() - t0
    report = quantizer_report(codes, z, q.code_sizes(), hist, targets)
    report.update(method=method, fit_seconds=round(seconds, 3), fit_info=q.fit_info)
    return q, codes, report


def format_compare(reports: dict[str, dict[str, Any]]) -> str:
    """One table: rows = metric per level, columns = methods."""
    methods = list(reports)
    keys = ["vocab", "used", "entropy", "max_entropy", "cond_entropy", "recon_rel_mse", "within_code_cos", "overlap"]
    lines = [f"{'metric':<22}" + "".join(f"{m:>12}" for m in methods)]
    levels = max(r["levels"] for r in reports.values())
    for lvl in range(levels):
        for k in keys:
            vals = [r["per_level"][lvl].get(k) if lvl < r["levels"] else None for r in reports.values()]
            if all(v is None for v in vals):
                continue
            cells = "".join(f"{'-':>12}" if v is None else (f"{v:>12d}" if isinstance(v, int) else f"{v:>12.4f}") for v in vals)
            lines.append(f"{f'L{lvl + 1} {k}':<22}{cells}")
    for k in ["collisions", "fit_seconds"]:
        lines.append(f"{k:<22}" + "".join(f"{reports[m][k]:>12}" for m in methods))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from resid.diagnostics import plot_report
    from resid import distributed as D
    from resid.io import load_embeddings, save_sids, write_json

    D.init(distributed=True if args.distributed else None, device="cpu")
    item_ids, emb, meta = load_embeddings(args.embeddings)
    if len(np.unique(item_ids)) != len(item_ids):
        vals, counts = np.unique(item_ids, return_counts=True)
        raise ValueError(f"{args.embeddings}: item_ids.npy has duplicate ids, e.g. {vals[counts > 1][:3].tolist()}")
    z = np.ascontiguousarray(emb, dtype=np.float32)
    branching = parse_branching(args.branching)
    hist = targets = None
    if args.dataset:
        hist, targets = _overlap_inputs(args.dataset, item_ids)
    out = Path(args.out_dir)
    methods = [args.method] + ([m for m in ("gaoq", "hkm", "rqkmeans") if m != args.method] if args.compare else [])
    reports: dict[str, dict[str, Any]] = {}
    for m in methods:
        print(f"resid quantize: fitting {m} on {z.shape[0]} x {z.shape[1]}", file=sys.stderr)
        q, codes, rep = quantize(emb if D.is_distributed() else z, m, branching, args.iters, args.seed, hist, targets,
                                 args.level1_sample if m == "gaoq" else None, args.anchor_basis)
        reports[m] = rep
        if m == args.method and D.is_main():  # rank 0 writes
            save_sids(out / "sids.parquet", item_ids, codes)
            q.save(out / "quantizer.npz")
            plot_report(codes, rep, out / "quantize_report.png", title=f"{m} on {args.embeddings}")
    if not D.is_main():
        return 0
    report = {**reports[args.method], "embeddings": str(args.embeddings), "embedding_meta": meta}
    if args.compare:
        report["compare"] = reports
        print(format_compare(reports))
    write_json(out / "quantize_report.json", report)
    r = reports[args.method]
    print(f"resid quantize: {r['num_items']} items -> {r['levels']} levels, code sizes {r['code_sizes']}, "
          f"{r['collisions']} collisions; wrote {out}/sids.parquet", file=sys.stderr)
    return 0
