"""`resid baseline sasrec|sasrec*|popularity DATASET OUT_DIR`: train/evaluate a baseline."""
from __future__ import annotations

import argparse

from resid.cli.famae import add_train_options, common_config, open_dataset_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="SASRec, SASRec* (with structured fields) or popularity, full-ranking Recall/NDCG@5,10")
    p.add_argument("model", choices=["sasrec", "sasrec*", "popularity"])
    p.add_argument("dataset", help="prepared dataset folder or builtin:NAME")
    p.add_argument("out_dir", help="run folder: best/, last/ (SASRec), metrics.json")
    add_train_options(p)
    p.add_argument("--similarity", choices=["cos", "dot"], default="cos", help="output scores: sqrt(d)*cos (as FAMAE) or dot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resid.baselines import SASRec, SASRecConfig, popularity_metrics
    from resid.io import write_json

    from resid import distributed as D

    D.init(distributed=True if args.distributed else None, device=args.device)
    ds = open_dataset_arg(args.dataset)
    report: dict = {"model": args.model, "dataset": ds.name}
    if args.model == "popularity":
        report["valid"], report["test"] = popularity_metrics(ds, "valid"), popularity_metrics(ds, "test")
    else:
        cfg = SASRecConfig(with_fields=args.model == "sasrec*", similarity=args.similarity, **common_config(args))
        model = SASRec(cfg)
        result = model.fit(ds, args.out_dir, resume=args.resume)
        report.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                      valid=model.evaluate(ds, "valid"), test=model.evaluate(ds, "test"), history=result.history)
    if not D.is_main():  # evaluation above is collective; files and the report come from rank 0
        D.barrier()
        return 0
    write_json(Path(args.out_dir) / "metrics.json", report)
    D.barrier()
    for split in ("valid", "test"):
        m = report[split]
        print(f"{args.model} {split}: " + " ".join(f"{k} {m[k]:.4f}" for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")))
    return 0
