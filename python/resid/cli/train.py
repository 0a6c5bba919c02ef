"""`resid train DATASET SIDS OUT_DIR`: train the T5 generator on a dataset's SIDs (G-stage)."""
from __future__ import annotations

import argparse
import json


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="prepared dataset folder, raw folder, or builtin:<name>")
    p.add_argument("sids", metavar="SIDS", help="sids.parquet (item_id, c1..cL), as written by `resid quantize`")


def register(sub: argparse._SubParsersAction) -> None:
    from resid.generator import GeneratorConfig

    d = GeneratorConfig()
    p = sub.add_parser("train", help="train the T5 generator (G-stage) on semantic IDs; keeps the best checkpoint")
    add_dataset_args(p)
    p.add_argument("out", metavar="OUT_DIR", help="checkpoint folder (generator.safetensors, generator.json, train_state.pt)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--patience", type=int, default=d.patience, help=f"stop after this many epochs without a better validation NDCG@10 (default {d.patience})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"default {d.weight_decay}")
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"default {d.dropout}")
    p.add_argument("--max-history", type=int, default=d.max_history, help=f"history items fed to the encoder (default {d.max_history})")
    p.add_argument("--beam", type=int, default=d.beam, help=f"beam width for validation (default {d.beam})")
    p.add_argument("--valid-users", type=int, default=None, help="validate on the first N users only (faster epochs)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/train_state.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from resid.distributed import add_cli_flag

    add_cli_flag(p)  # --batch-size is then the global batch
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resid.data import open_dataset
    from resid.generator import GeneratorConfig
    from resid.generator_train import align_sids, train
    from resid.distributed import init_for_cli, is_main
    from resid.io import load_sids

    device = init_for_cli(args.distributed, args.device)
    for name in ("epochs", "batch_size", "max_history", "beam", "patience"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    ds = open_dataset(args.dataset)
    ids, codes = load_sids(args.sids)
    sids = align_sids(ds, ids, codes, args.sids)
    cfg = GeneratorConfig(codes_per_level=[int(c) + 1 for c in sids.max(axis=0)], epochs=args.epochs,
                          patience=args.patience, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          dropout=args.dropout, max_history=args.max_history, beam=args.beam, seed=args.seed)
    res = train(ds, sids, args.out, cfg, device=device, resume=args.resume, valid_users=args.valid_users,
                progress=not args.quiet)
    if is_main():
        print(json.dumps({"best_epoch": res["best_epoch"], "valid": res["best"], "checkpoint": args.out}, indent=2))
    return 0
