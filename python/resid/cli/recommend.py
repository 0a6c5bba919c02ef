"""`resid recommend CHECKPOINT SIDS HISTORIES`: top-K items for each history in a file.

HISTORIES: a text file, one user per line, item ids separated by spaces or commas, oldest
first (an empty line is an empty history); or a ``.jsonl`` file of {"user": ..., "items": [...]}.
Output: one JSON line per user, {"user", "items", "scores", "unknown"}, on stdout or --out."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="top-K recommendations for histories read from a file")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="folder written by `resid train`")
    p.add_argument("sids", metavar="SIDS", help="the sids.parquet the checkpoint was trained on")
    p.add_argument("histories", metavar="HISTORIES", help="text (ids per line) or .jsonl ({'user', 'items'}) file")
    p.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--beam", type=int, default=None, help="beam width (default: the checkpoint's, at least k)")
    p.add_argument("--unknown", choices=["skip", "error"], default="skip",
                   help="history items missing from SIDS: skip and count them, or fail (default skip)")
    p.add_argument("--batch-size", type=int, default=256, help="users per decoding batch (default 256)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    from resid.distributed import add_cli_flag

    add_cli_flag(p)
    p.add_argument("--out", default=None, help="write the JSON lines here (atomically) instead of stdout")
    p.set_defaults(func=run)


def read_histories(path: str) -> tuple[list[Any], list[list[str]]]:
    """(user labels, histories of item ids) from a text or .jsonl file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"histories file {p} does not exist")
    users: list[Any] = []
    hists: list[list[str]] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if p.suffix == ".jsonl":
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("items"), list):
                raise ValueError(f"{p}:{n}: each line must be an object with an 'items' list")
            users.append(obj.get("user", len(users)))
            hists.append([str(x) for x in obj["items"]])
        else:
            users.append(len(users))
            hists.append([t for t in re.split(r"[\s,]+", line.strip()) if t])
    return users, hists


def run(args: argparse.Namespace) -> int:
    from resid.distributed import init_for_cli, is_main
    from resid.io import atomic_write
    from resid.recommender import Recommender

    device = init_for_cli(args.distributed, args.device)  # users are split across ranks, gathered on each
    users, hists = read_histories(args.histories)
    kw: dict[str, Any] = {"batch_size": args.batch_size, "device": device, "unknown": args.unknown}
    if args.beam is not None:
        kw["beam"] = args.beam
    rec = Recommender.load(args.checkpoint, args.sids, **kw)
    out = rec.recommend(hists, k=args.k, progress=True)
    if not is_main():
        return 0
    assert out.item_ids is not None
    lines = []
    for u, user in enumerate(users):
        keep = out.items[u] >= 0
        lines.append(json.dumps({"user": user, "items": out.item_ids[u][keep].tolist(),
                                 "scores": [round(float(s), 6) for s in out.scores[u][keep]],
                                 "unknown": int(out.unknown[u])}))
    text = "\n".join(lines) + ("\n" if lines else "")
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
        print(f"wrote {len(lines)} users to {args.out} ({int(out.unknown.sum())} unknown history items skipped)",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
