"""`resid run`: the whole pipeline on a dataset (default: the bundled real sample)."""
from __future__ import annotations

import argparse
import logging
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the whole ReSID pipeline (prepare, FAMAE, GAOQ, generator, baselines) and print the table")
    p.add_argument("--data", default=None, help="builtin:NAME, a raw dataset folder, or a prepared one (default builtin:amazon-scientific)")
    p.add_argument("--out", default="runs/resid", help="run folder (default runs/resid); finished stages are skipped on a rerun")
    p.add_argument("--preset", choices=["quick", "paper"], default=None,
                   help="quick (default on CPU: ~10 min on the bundled sample) or paper (Appendix E settings; default on GPU)")
    p.add_argument("--config", default=None, help="YAML or TOML file overriding any setting (sections: data, famae, quantizer, generator, sasrec, text)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=None, help="seed for every stage (default 0)")
    p.add_argument("--force", action="store_true", help="reuse --out even if it holds a run with other settings (stages that changed are redone)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="run every stage across the processes torchrun started (auto-detected under torchrun): DDP "
                        "training, users split for evaluation, sharded GAOQ; rank 0 writes the run folder and prints "
                        "the table (see docs/distributed.md)")
    p.set_defaults(func=run)


def cli_overrides(args: argparse.Namespace) -> dict:
    """--data / --device / --seed as config overrides (they win over the preset and the file)."""
    overrides: dict = {}
    if args.data:
        overrides["data"] = {"spec": args.data}
    if args.device:
        overrides["device"] = args.device
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def run(args: argparse.Namespace) -> int:
    import torch

    from resid import distributed as D
    from resid.pipeline import Pipeline, format_table
    from resid.runconfig import build_config

    preset = args.preset or ("paper" if torch.cuda.is_available() and args.device != "cpu" else "quick")
    cfg = build_config(preset, args.config, cli_overrides(args))
    pipe = Pipeline(cfg, args.out, force=args.force, progress=not args.quiet, distributed=True if args.distributed else None)
    logging.basicConfig(level=logging.INFO if D.is_main() else logging.WARNING, format="%(message)s", stream=sys.stderr)
    metrics = pipe.run_all()  # collective under torchrun: every rank gets the same metrics
    if not D.is_main():
        return 0
    print(format_table(metrics))
    for note in pipe.notes:
        print(f"note: {note}")
    print(f"\nwritten: {pipe.run.root}/metrics.json, report.md, curves.png, quantize_gaoq/sids.parquet")
    return 0
