"""Environment for tests that start Python subprocesses (`python -m resid ...`, torchrun).

Children must import the same resid / resid_ext that pytest imported: the installed package in
CI (`pip install .`), the source tree with an in-place build during development. `python -m`
puts the working directory first on sys.path, and the repository root holds the source
``resid_ext/`` without a compiled ``_C``, so children run from a neutral directory."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import resid
import resid_ext

IMPORT_PATHS = list(dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (resid, resid_ext)))
NEUTRAL_CWD = tempfile.gettempdir()


def pythonpath(existing: str | None = None) -> str:
    """PYTHONPATH for a child: where resid and resid_ext were imported from, then ``existing``."""
    return os.pathsep.join(IMPORT_PATHS + ([existing] if existing else []))
