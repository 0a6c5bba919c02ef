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
    # under torchrun: tells the other ranks when this one fails
    from resid import distributed

    ok = False
    try:
        rc = int(args.func(args) or 0)
        ok = rc == 0
        if not ok:
            distributed.report_failure(f"resid {args.command} exited with code {rc}")
    except BaseException as e:
        if distributed.peer_failure() is not None:
            rc = 1  # a consequence of another rank's failure, which was printed above
        elif isinstance(e, (ValueError, FileNotFoundError, FileExistsError, RuntimeError)):
            # User-facing errors: one clear line, no traceback. Bugs (other types) still trace.
            print(f"{_who(args.command)}: error: {e}", file=sys.stderr)
            distributed.report_failure(e)
            rc = 1
        elif isinstance(e, KeyboardInterrupt):
            print(f"{_who(args.command)}: interrupted; finished outputs are kept, partial ones were not written", file=sys.stderr)
            distributed.report_failure(e)
            rc = 130
        else:
            if not (isinstance(e, SystemExit) and e.code in (0, None)):
                distributed.report_failure(e)  # first stop the other ranks, then the traceback
            distributed.shutdown(barrier=False)
            raise
    joined = distributed.is_distributed()
    distributed.shutdown(barrier=ok)  # leave the torchrun process group, if a command joined one
    if joined:
        distributed.exit_worker(rc)
    return rc


def _who(command: str) -> str:
    """The prefix of error lines: "resid CMD", plus the rank under torchrun (every rank prints its own)."""
    from resid import distributed

    return f"resid {command} (rank {distributed.get_rank()})" if distributed.is_distributed() else f"resid {command}"


if __name__ == "__main__":
    sys.exit(main())
