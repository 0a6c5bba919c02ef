"""A run folder whose stages are skipped when their outputs exist and match the config.

Each stage writes into ``ROOT/.NAME.partial-FP/`` (kept across interruptions so trainers can
resume from their own last checkpoint there), then is renamed to ``ROOT/NAME/`` with a
``stage.json`` holding its fingerprint. A finished stage whose fingerprint matches is skipped;
one that does not match is refused unless ``force`` (then it is redone).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

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

    def stage(self, name: str, fp: str, fn: Callable[[Path], dict[str, Any] | None]) -> Path:
        """Run ``fn(work_dir)`` unless ``name`` is done with fingerprint ``fp``; return its folder."""
        final = self.root / name
        if self.done(name, fp):
            log.info("stage %s: up to date, skipped", name)
            self.skipped.append(name)
            return final
        if final.exists():
            if not self.force:
                raise ConfigMismatch(f"stage {name} in {self.root} was made with other settings; use --force to redo it")
            shutil.rmtree(final)
        work = self.root / f".{name}.partial-{fp}"
        for stale in self.root.glob(f".{name}.partial-*"):
            if stale != work:
                shutil.rmtree(stale, ignore_errors=True)
        work.mkdir(exist_ok=True)
        t0 = time.time()
        info = fn(work) or {}
        write_json(work / "stage.json", {"stage": name, "fingerprint": fp, "seconds": round(time.time() - t0, 2), **info})
        work.rename(final)
        self.ran.append(name)
        return final


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys
