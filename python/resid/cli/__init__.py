"""`resid` command line. Each subcommand lives in its own module in this package, which
defines ``register(subparsers)``; the parser it adds sets ``func`` to its runner."""
from __future__ import annotations

import argparse
import importlib
import sys

# One module per subcommand, in the order `resid --help` lists them.
COMMANDS = ["info", "datasets", "prepare", "famae", "baseline", "embed_text", "quantize", "train", "evaluate", "recommend", "run", "ablate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resid",
        description="ReSID generative recommender: FAMAE embeddings, GAOQ semantic IDs, T5 generator.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"resid.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    ok = False
    try:
        rc = int(args.func(args) or 0)
        ok = rc == 0
        return rc
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        # User-facing errors: one clear line, no traceback. Bugs (other types) still trace.
        print(f"resid {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"resid {args.command}: interrupted; finished outputs are kept, partial ones were not written", file=sys.stderr)
        return 130
    finally:
        from resid import distributed  # leave the torchrun process group, if a command joined one

        distributed.shutdown(barrier=ok)


if __name__ == "__main__":
    sys.exit(main())
