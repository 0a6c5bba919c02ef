"""`resid famae DATASET OUT_DIR`: train FAMAE, report Metric 1/2 on valid and test, export embeddings."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from resid.data.dataset import PreparedDataset


def open_dataset_arg(spec: str) -> PreparedDataset:
    """A prepared-dataset folder, or any spec ``resid.data.open_dataset`` accepts (builtin:NAME,
    a raw folder prepared on the fly with the paper's protocol)."""
    from resid.data import open_dataset

    return open_dataset(spec)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by FAMAE and the SASRec baselines (paper Appendix E defaults)."""
    g = p.add_argument_group("model and training")
    # --dim: alias that torchrun does not mistake for an abbreviation of its own --duplicate-* options
    g.add_argument("--d", "--dim", dest="d", type=int, default=128, help="embedding / hidden size (default 128)")
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--ffn", type=int, default=512)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--max-len", type=int, default=32, help="training window length (history + target)")
    g.add_argument("--fields", default=None, help="comma-separated fields to use, item_id first (default: all)")
    g.add_argument("--epochs", type=int, default=500, help="maximum epochs (early stopping usually ends sooner)")
    g.add_argument("--batch-size", type=int, default=2048)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-5)
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--patience", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its last/ checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--distributed", action="store_true",
                   help="train with DDP across the processes torchrun started (auto-detected under torchrun); "
                        "--batch-size is the global batch; rank 0 writes all files")


def common_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "d": args.d, "layers": args.layers, "heads": args.heads, "ffn": args.ffn, "dropout": args.dropout,
        "max_len": args.max_len, "fields": args.fields.split(",") if args.fields else None,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps, "patience": args.patience, "seed": args.seed, "device": args.device,
        "progress": not args.no_progress,
    }


def _field_weights(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for it in items:
        name, sep, value = it.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"--field-weight must look like NAME=WEIGHT, got {it!r}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("famae", help="train the FAMAE encoder, report Metric 1/2, export item embeddings")
    p.add_argument("dataset", help="prepared dataset folder or builtin:NAME")
    p.add_argument("out_dir", help="run folder: best/, last/, embeddings/, metrics.json")
    add_train_options(p)
    p.add_argument("--field-weight", action="append", default=[], metavar="NAME=W", help="alpha for a field (default 1); repeatable")
    p.add_argument("--sampled-threshold", type=int, default=50_000, help="fields with more values use sampled softmax")
    p.add_argument("--negatives", type=int, default=128, help="negatives per sampled-softmax step")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resid.famae import FAMAE, FAMAEConfig
    from resid.io import write_json

    from resid import distributed as D

    D.init(distributed=True if args.distributed else None, device=args.device)
    ds = open_dataset_arg(args.dataset)
    cfg = FAMAEConfig(**common_config(args), field_weights=_field_weights(args.field_weight),
                      sampled_softmax_threshold=args.sampled_threshold, num_negatives=args.negatives)
    model = FAMAE(cfg)
    result = model.fit(ds, args.out_dir, resume=args.resume)
    report = {
        "model": "famae", "dataset": ds.name, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "valid": model.evaluate(ds, "valid"), "test": model.evaluate(ds, "test"), "history": result.history,
    }
    out = Path(args.out_dir)
    if not D.is_main():  # evaluation above is collective; files and the report come from rank 0
        D.barrier()
        return 0
    model.export(ds, out / "embeddings")
    write_json(out / "metrics.json", report)
    D.barrier()
    for split in ("valid", "test"):
        m = report[split]
        print(f"{split}: Metric1 R@10 {m['m1/recall@10']:.4f} N@10 {m['m1/ndcg@10']:.4f} | "
              f"Metric2 R@10 {m['m2/recall@10']:.4f} N@10 {m['m2/ndcg@10']:.4f}")
    print(f"best epoch {result.best_epoch}; embeddings -> {out / 'embeddings'}; metrics -> {out / 'metrics.json'}", file=sys.stderr)
    return 0
