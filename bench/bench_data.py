"""Data layer at scale: prepare() on a synthetic 1M-event dataset, then the vectorised
train_samples / split against the original per-user Python loop (same output required).

    python bench/bench_data.py [--events 1000000] [--users 100000] [--items 50000]

Prints one JSON line per tool; progress on stderr."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from resid.data import RawDataset, prepare


def loop_train_samples(offsets: np.ndarray, items: np.ndarray, max_len: int) -> np.ndarray:
    """The seed implementation (one Python iteration per sample), for reference."""
    rows = []
    for u in range(len(offsets) - 1):
        s = items[offsets[u] : offsets[u + 1] - 2]
        for t in range(1, len(s)):
            w = s[max(0, t + 1 - max_len) : t + 1]
            row = np.full(max_len, -1, dtype=np.int64)
            row[max_len - len(w) :] = w
            rows.append(row)
    return np.stack(rows) if rows else np.empty((0, max_len), dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--max-len", type=int, default=32)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    u = rng.integers(0, a.users, a.events)
    i = rng.zipf(1.3, a.events) % a.items
    ev = pd.DataFrame({"user_id": u.astype(str), "item_id": i.astype(str), "timestamp": rng.integers(0, 10**9, a.events)})
    it = pd.DataFrame({"item_id": np.arange(a.items).astype(str), "cat": (np.arange(a.items) % 97).astype(str)})
    raw = RawDataset("synthetic", "tidy", it.astype(object), ev.astype({"user_id": object, "item_id": object}))
    print("prepare ...", file=sys.stderr)
    t = time.perf_counter()
    ds = prepare(raw, tempfile.mkdtemp() + "/p", max_len=a.max_len)
    cfg = {"events": a.events, "interactions": ds.stats["interactions"], "users": ds.num_users, "items": ds.num_items}
    print(json.dumps({**cfg, "tool": "prepare", "seconds": round(time.perf_counter() - t, 3), "correct": ds.stats["min_seq_len"] >= 5}))
    print("train_samples ...", file=sys.stderr)
    t = time.perf_counter()
    fast = ds.train_samples(a.max_len, cover_eval_items=False)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    ref = loop_train_samples(np.asarray(ds.seq_offsets), np.asarray(ds.seq_items), a.max_len)
    t_loop = time.perf_counter() - t
    same = bool(np.array_equal(fast, ref))
    print(json.dumps({**cfg, "tool": "train_samples", "samples": len(fast), "seconds": round(t_fast, 3), "correct": same}))
    print(json.dumps({**cfg, "tool": "train_samples_loop", "samples": len(ref), "seconds": round(t_loop, 3), "correct": same}))
    t = time.perf_counter()
    ds.split("valid", a.max_len)
    te = ds.split("test", a.max_len)
    ok = bool((te.targets == np.asarray(ds.seq_items)[np.asarray(ds.seq_offsets)[1:] - 1]).all())
    print(json.dumps({**cfg, "tool": "split_valid_test", "seconds": round(time.perf_counter() - t, 3), "correct": ok}))


if __name__ == "__main__":
    main()
