"""`resid evaluate DATASET SIDS CHECKPOINT`: Recall@5/10 and NDCG@5/10 (leave-one-out) on valid and test."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from resid.cli.train import add_dataset_args

    p = sub.add_parser("evaluate", help="Recall@5/10 and NDCG@5/10 of a trained generator on the valid and test splits")
    add_dataset_args(p)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="folder written by `resid train`")
    p.add_argument("--splits", default="valid,test", help="comma-separated splits (default valid,test)")
    p.add_argument("--beam", type=int, default=None, help="beam width (default: the checkpoint's, 50)")
    p.add_argument("--batch-size", type=int, default=256, help="users per decoding batch (default 256)")
    p.add_argument("--max-users", type=int, default=None, help="evaluate the first N users only")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from resid.distributed import add_cli_flag

    add_cli_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resid.data import open_dataset
    from resid.distributed import init_for_cli, is_main
    from resid.generator_train import align_sids, evaluate, load_checkpoint
    from resid.io import load_sids
    from resid.recommender import Recommender, sids_digest

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for s in splits:
        if s not in ("valid", "test"):
            raise ValueError(f"--splits: unknown split {s!r} (valid, test)")
    device = init_for_cli(args.distributed, args.device)  # users are split across ranks
    ds = open_dataset(args.dataset)
    ids, codes = load_sids(args.sids)
    sids = align_sids(ds, ids, codes, args.sids)
    model, meta = load_checkpoint(args.checkpoint, device)
    if meta.get("sids_sha256") not in (None, sids_digest(sids)):
        raise ValueError(f"checkpoint/SID mismatch: {args.checkpoint} was trained on other SIDs than {args.sids}")
    rec = Recommender(model, sids, beam=args.beam, batch_size=args.batch_size, device=device)
    out = {s: evaluate(model, ds, sids, s, recommender=rec, max_users=args.max_users, progress=not args.quiet)
           for s in splits}
    if is_main():
        print(json.dumps({"checkpoint": args.checkpoint, "beam": rec.beam, **out}, indent=2))
    return 0
