"""Where should a CUDA solve run its auction: in the GPU kernel (one segment per GPU thread) or
on the host beside the GPU candidates? Times one ``balanced_assign_segmented`` call on CUDA
tensors both ways, over a range of segment counts, and prints one JSON line per (config, way)
with ``kernel_over_host`` (> 1: the host is faster). Sets ``GPU_AUCTION_MIN_SEGMENTS``.

    PYTHONPATH=python:. python bench/auction_device.py [--config N,S,K_PER_SEGMENT,D ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import resid_ext  # noqa: E402
import resid_ext.balanced as B  # noqa: E402
from _jsonl import emit, progress  # noqa: E402

WAYS = {"gpu-kernel": 0, "host": 1 << 62}  # value of GPU_AUCTION_MIN_SEGMENTS


def solve(x, off, c, coff, cap) -> tuple[float, torch.Tensor]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    lab = resid_ext.balanced_assign_segmented(x, off, c, coff, cap)
    torch.cuda.synchronize()
    return time.perf_counter() - t, lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], metavar="N,S,K,D")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    grid = [tuple(int(v) for v in c.split(",")) for c in args.config] or [
        (262_144, 64, 64, 64), (262_144, 256, 16, 64), (262_144, 1024, 8, 64), (262_144, 4096, 4, 64),
        (1_048_576, 16_384, 8, 32), (1_048_576, 65_536, 4, 32)]
    for n, S, k, d in grid:
        g = torch.Generator().manual_seed(n + S)
        x = torch.randn(n, d, generator=g).cuda()
        sizes = resid_ext.default_capacity(n, S)  # segment sizes as equal as possible
        off = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).cuda()
        coff = torch.arange(S + 1, dtype=torch.int64).cuda() * k
        c = torch.randn(S * k, d, generator=g).cuda()
        cap = torch.cat([resid_ext.default_capacity(int(m), k) for m in sizes]).cuda()
        rec: dict[str, float] = {}
        labels = {}
        for way, threshold in WAYS.items():
            B.GPU_AUCTION_MIN_SEGMENTS = threshold
            progress(f"[auction_device] n={n} S={S} k={k} d={d} {way}")
            solve(x, off, c, coff, cap)  # warm-up
            secs = []
            for _ in range(args.repeats):
                sec, labels[way] = solve(x, off, c, coff, cap)
                secs.append(sec)
            rec[way] = statistics.median(secs)
        same = bool(torch.equal(labels["gpu-kernel"], labels["host"]))
        emit({"bench": "auction_device", "n": n, "segments": S, "k_per_segment": k, "d": d,
              "gpu_kernel_s": round(rec["gpu-kernel"], 4), "host_s": round(rec["host"], 4),
              "kernel_over_host": round(rec["gpu-kernel"] / rec["host"], 3), "same_labels": same,
              "host_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
