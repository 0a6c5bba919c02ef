"""Bundled real samples (``builtin:<name>``), dataset specs, and the prepared-dataset cache.

A *spec* is ``builtin:<name>``, a raw dataset folder (any format :mod:`resid.data.readers`
reads), or a prepared folder. :func:`open_dataset` turns any spec into a
:class:`PreparedDataset`, preparing raw data into a cache folder keyed by the settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from resid.data.dataset import PreparedDataset, is_prepared, load_prepared

BUILTIN_PREFIX = "builtin:"
DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
# Bump when prepare() changes what it writes for the same input and settings (invalidates caches).
PREPARE_VERSION = 1


def list_builtin() -> list[dict[str, Any]]:
    """Each bundled dataset's ``dataset.json`` (name, users, items, events, fields, text, ...)."""
    out = []
    for d in sorted(DATASETS_DIR.iterdir()) if DATASETS_DIR.is_dir() else []:
        info = d / "dataset.json"
        if info.is_file():
            out.append({**json.loads(info.read_text()), "path": str(d)})
    return out


def builtin_info(name: str) -> dict[str, Any]:
    for info in list_builtin():
        if info["name"] == name:
            return info
    names = [i["name"] for i in list_builtin()]
    raise FileNotFoundError(f"no builtin dataset {name!r}; available: {', '.join('builtin:' + n for n in names)}")


def builtin_defaults(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``prepare`` settings a bundled dataset folder declares ({} for any other folder)."""
    p = Path(folder).resolve()
    if p.parent == DATASETS_DIR and (p / "dataset.json").is_file():
        return dict(json.loads((p / "dataset.json").read_text()).get("prepare", {}))
    return {}


def resolve_raw(spec: str | os.PathLike[str]) -> Path:
    """``builtin:<name>`` -> the bundled folder; a path -> that path (which must exist). A bare
    builtin name is accepted when no file or folder of that name exists."""
    s = str(spec)
    if s.startswith(BUILTIN_PREFIX):
        return Path(builtin_info(s[len(BUILTIN_PREFIX):])["path"])
    p = Path(s).expanduser()
    if p.exists():
        return p
    if any(i["name"] == s for i in list_builtin()):
        return Path(builtin_info(s)["path"])
    raise FileNotFoundError(f"dataset {s!r}: no such folder (builtin datasets: {', '.join('builtin:' + i['name'] for i in list_builtin())})")


def cache_dir(kind: str) -> Path:
    """``$RESID_CACHE_DIR/<kind>`` if set, else ``~/.cache/resid/<kind>``; when that cannot be
    created (read-only home), ``<tmp>/resid-cache-<uid>/<kind>``."""
    root = os.environ.get("RESID_CACHE_DIR")
    path = (Path(root) if root else Path.home() / ".cache" / "resid") / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        if root:  # an explicit setting that does not work is the user's to fix
            raise
        path = Path(tempfile.gettempdir()) / f"resid-cache-{os.getuid() if hasattr(os, 'getuid') else 0}" / kind
        path.mkdir(parents=True, exist_ok=True)
    return path


def default_cache_dir() -> Path:
    """Where prepared datasets are cached: :func:`cache_dir` ``("prepared")``."""
    return cache_dir("prepared")


def _fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def open_dataset(
    spec: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    fields: Sequence[str] | None = None,
    required_fields: Sequence[str] | None = None,
    min_count: int = 5,
    max_len: int = 32,
    format: str | None = None,
    refresh: bool = False,
) -> PreparedDataset:
    """A prepared dataset for ``spec`` (``builtin:<name>``, a raw folder or a prepared folder).

    A prepared folder is loaded as is (memory-mapped). Raw data is prepared once into
    ``<cache_dir>/<name>-<hash>`` (hash of the files' names/sizes/mtimes and the settings;
    written atomically) and loaded from there afterwards; ``refresh=True`` prepares again.
    Builtin datasets default to their ``dataset.json`` settings (``required_fields=[]`` for
    the bundled samples, whose missing values are kept as the value "")."""
    from resid.data.prepare import prepare

    s = str(spec)
    if not s.startswith(BUILTIN_PREFIX) and is_prepared(Path(s).expanduser()):
        return load_prepared(Path(s).expanduser())
    folder = resolve_raw(spec)
    name = folder.name
    if required_fields is None:
        required_fields = builtin_defaults(folder).get("required_fields")
    settings = {
        "fields": None if fields is None else list(fields),
        "required_fields": None if required_fields is None else list(required_fields),
        "min_count": min_count, "max_len": max_len, "format": format, "version": PREPARE_VERSION,
    }
    key = json.dumps({"folder": str(folder.resolve()), "files": _fingerprint(folder), "settings": settings}, sort_keys=True)
    out = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = out / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if refresh or not is_prepared(out):
        try:
            prepare(folder, out, fields=fields, required_fields=required_fields, min_count=min_count,
                    max_len=max_len, format=format, name=name)
        except OSError:
            # another process renamed its identical copy into place first: use that one
            if refresh or not is_prepared(out):
                raise
    return load_prepared(out)
