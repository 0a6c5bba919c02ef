"""A run folder whose stages are skipped when their outputs exist and match the config.

Each stage writes into ``ROOT/.NAME.partial-FP/`` (kept across interruptions so trainers can
resume from their own last checkpoint there), then is renamed to ``ROOT/NAME/`` with a
``stage.json`` holding its fingerprint. A finished stage whose fingerprint matches is skipped;
one that does not match is refused unless ``force`` (then it is redone).

Under torchrun (``resid.distributed``) every rank runs the stages together, but only rank 0
touches the folder: it checks and writes ``config.json``, decides whether a stage is skipped
(the decision is broadcast, so every rank agrees), prepares the work folder and, once the
stage's body has finished on every rank, writes ``stage.json`` and renames the folder. The
other ranks continue only after that, so they read finished outputs only. Stage bodies must
themselves write on rank 0 only (or be run with ``rank0_only=True``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resid import distributed as D
from resid.io import write_json

log = logging.getLogger("resid.run")


class ConfigMismatch(ValueError):
    pass


class RunDir:
    def __init__(self, root: str | Path, config: dict[str, Any], force: bool = False) -> None:
        self.root = Path(root)
        self.config = config
        self.force = force
        self.ran: list[str] = []
        self.skipped: list[str] = []
        D.on_rank0(self._open)  # rank 0 creates the folder and checks/writes config.json

    def _open(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"--out {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_config()

    def _check_config(self) -> None:
        path = self.root / "config.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = None
            if old != self.config and not self.force:
                diff = _diff_keys(old or {}, self.config)
                raise ConfigMismatch(
                    f"--out {self.root} holds a run with a different config (differs in: {', '.join(diff) or 'unreadable config.json'}); "
                    "use another --out, or --force to redo the stages that changed"
                )
        write_json(path, self.config)

    def done(self, name: str, fp: str) -> bool:
        marker = self.root / name / "stage.json"
        if not marker.exists():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == fp
        except json.JSONDecodeError:
            return False

    def stage(self, name: str, fp: str, fn: Callable[[Path], dict[str, Any] | None], rank0_only: bool = False) -> Path:
        """Run ``fn(work_dir)`` unless ``name`` is done with fingerprint ``fp``; return its folder.

        Under torchrun every rank calls this with the same arguments; ``fn`` runs on every rank
        (it must write files on rank 0 only), or on rank 0 alone with ``rank0_only`` (the others
        wait; an exception is then raised on every rank). Returns once the finished folder is
        in place, on every rank."""
        final = self.root / name
        work = self.root / f".{name}.partial-{fp}"
        if D.on_rank0(lambda: self._plan(name, fp, final, work)) == "skip":
            log.info("stage %s: up to date, skipped", name)
            self.skipped.append(name)
            return final
        t0 = time.time()
        with D.phase(f"stage {name}"):
            _test_failure_hook(name)
            info = D.on_rank0(lambda: fn(work)) if rank0_only else fn(work)

        def finish() -> None:
            write_json(work / "stage.json", {"stage": name, "fingerprint": fp, "seconds": round(time.time() - t0, 2), **(info or {})})
            work.rename(final)

        D.on_rank0(finish)  # every rank waits for the finished folder
        self.ran.append(name)
        return final

    def _plan(self, name: str, fp: str, final: Path, work: Path) -> str:
        """Rank 0: "skip" when the stage is done with ``fp``, else clear the way and "run"."""
        if self.done(name, fp):
            return "skip"
        if final.exists():
            if not self.force:
                raise ConfigMismatch(f"stage {name} in {self.root} was made with other settings; use --force to redo it")
            shutil.rmtree(final)
        for stale in self.root.glob(f".{name}.partial-*"):
            if stale != work:
                shutil.rmtree(stale, ignore_errors=True)
        work.mkdir(exist_ok=True)
        return "run"


def _test_failure_hook(stage: str) -> None:
    """Test-only fault injection for the distributed tests: with RESID_TEST_FAIL_RANK=R (and
    optionally RESID_TEST_FAIL_STAGE=NAME) rank R raises at the start of that stage (of every
    stage without RESID_TEST_FAIL_STAGE). Never set in normal use."""
    rank = os.environ.get("RESID_TEST_FAIL_RANK")
    if rank is None or int(rank) != D.get_rank():
        return
    if os.environ.get("RESID_TEST_FAIL_STAGE", stage) == stage:
        raise RuntimeError(f"injected test failure (RESID_TEST_FAIL_RANK={rank}) at the start of stage {stage}")


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys
