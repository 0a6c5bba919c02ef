"""`resid ablate`: the Q-stage ablation (paper Sec. 5.2) on one FAMAE embedding set."""
from __future__ import annotations

import argparse
import logging
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="compare quantizers (gaoq, hkm, rqkmeans) on one FAMAE embedding set and one generator config")
    p.add_argument("--quantizer", default="gaoq,hkm,rqkmeans", help="comma-separated methods (default gaoq,hkm,rqkmeans)")
    p.add_argument("--data", default=None, help="builtin:NAME, a raw or a prepared dataset folder (default builtin:amazon-scientific)")
    p.add_argument("--out", default="runs/ablate", help="run folder (default runs/ablate); shares the resume rules of `resid run`")
    p.add_argument("--preset", choices=["quick", "paper"], default="quick")
    p.add_argument("--config", default=None, help="YAML or TOML overrides, as for `resid run`")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--distributed", action="store_true",
                   help="run across the processes torchrun started (auto-detected under torchrun), as `resid run --distributed`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resid import distributed as D
    from resid.cli.run import cli_overrides
    from resid.pipeline import Pipeline, format_ablation
    from resid.runconfig import build_config

    cfg = build_config(args.preset, args.config, cli_overrides(args))
    methods = [m.strip() for m in args.quantizer.split(",") if m.strip()]
    pipe = Pipeline(cfg, args.out, force=args.force, progress=not args.quiet, distributed=True if args.distributed else None)
    logging.basicConfig(level=logging.INFO if D.is_main() else logging.WARNING, format="%(message)s", stream=sys.stderr)
    rows = pipe.ablate(methods)
    if not D.is_main():
        return 0
    print(format_ablation(rows))
    print(f"\nwritten: {args.out}/ablation.json")
    return 0
