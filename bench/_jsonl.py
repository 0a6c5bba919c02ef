"""JSON-lines output for benchmarks: results on stdout, progress on stderr."""
from __future__ import annotations

import json
import sys
from typing import Any


def emit(record: dict[str, Any]) -> None:
    """Print one result line (one config x tool) and flush."""
    print(json.dumps(record, sort_keys=False), flush=True)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
