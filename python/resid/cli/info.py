"""`resid info`: versions, build facts (CUDA/OpenMP), devices."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show the build (CUDA, OpenMP) and the devices resid sees")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import resid
    import resid_ext

    info = {"resid": resid.__version__, "torch": torch.__version__, **{f"ext.{k}": v for k, v in resid_ext.build_info().items()}}
    print(json.dumps(info, indent=2))
    return 0
