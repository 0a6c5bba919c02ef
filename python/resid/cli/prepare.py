"""`resid prepare RAW OUT`: raw dataset (any supported format, or builtin:<name>) -> prepared dataset."""
from __future__ import annotations

import argparse
import json
import logging


def _names(s: str | None) -> list[str] | None:
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    from resid.data.readers import FORMATS

    p = sub.add_parser("prepare", help="filter, 5-core, split and index a raw dataset into a prepared folder")
    p.add_argument("raw", metavar="RAW_DIR", help="raw dataset folder or builtin:<name> (see `resid datasets`)")
    p.add_argument("out", metavar="OUT_DIR", help="prepared dataset folder to write (atomically)")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (default: detected from the files)")
    p.add_argument("--fields", default=None, help="comma-separated item fields to keep (default: all)")
    p.add_argument("--required-fields", default=None,
                   help="comma-separated fields an item must have, else it is dropped (default: all chosen fields; '' for none)")
    p.add_argument("--min-count", type=int, default=5, help="k of the iterative k-core on users and items (default 5)")
    p.add_argument("--max-len", type=int, default=32, help="sliding-window length (default 32)")
    p.add_argument("--duplicates", choices=["error", "first"], default="error",
                   help="duplicate item rows with conflicting fields: fail, or keep the first (default error)")
    p.add_argument("--quiet", action="store_true", help="print only the stats, not the decisions log")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resid.data.prepare import prepare

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ds = prepare(args.raw, args.out, fields=_names(args.fields), required_fields=_names(args.required_fields), min_count=args.min_count,
                 max_len=args.max_len, format=args.format, duplicates=args.duplicates)
    print(json.dumps(ds.stats, indent=2))
    return 0
