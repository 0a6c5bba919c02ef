"""File formats passed between stages, all written atomically (temporary name, then rename).

Embeddings (E-stage output, Q-stage input), a folder:
    embeddings.npy   [N, D] float32, row i = item i
    item_ids.npy     [N] str, original item ids
    embeddings.json  {"num_items", "dim", "source", ...} free-form metadata
Semantic IDs (Q-stage output, G-stage input), one parquet file:
    sids.parquet     columns item_id (str), c1 .. cL (int64); row order = item rows
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (same folder, so the rename is
    atomic): readers see the old file or the complete new one, never a partial one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_dir(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp_dir)`` on a new temporary sibling folder, then rename it to ``path``: an
    existing ``path`` is replaced only once the new folder is complete, so readers see the old
    folder or the complete new one. On any error the temporary folder is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=_json_default)))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- embeddings --------------------------------------------------------------------------
def save_embeddings(
    out_dir: str | os.PathLike[str], item_ids: np.ndarray, embeddings: np.ndarray, meta: dict[str, Any] | None = None
) -> Path:
    """Write an embedding folder (see module docstring). ``embeddings``: [N, D] float32."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    ids = np.asarray(item_ids).astype(str)
    if emb.ndim != 2:
        raise ValueError(f"save_embeddings: embeddings must be 2-D [N, D], got shape {list(emb.shape)}")
    if len(ids) != emb.shape[0]:
        raise ValueError(f"save_embeddings: {len(ids)} item ids for {emb.shape[0]} embedding rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_npy(out / "item_ids.npy", ids)
    _save_npy(out / "embeddings.npy", emb)
    write_json(out / "embeddings.json", {"num_items": int(emb.shape[0]), "dim": int(emb.shape[1]), **(meta or {})})
    return out


def load_embeddings(path: str | os.PathLike[str], mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read an embedding folder -> (item_ids [N] str, embeddings [N, D] float32, meta).
    ``path`` may be the folder or its ``embeddings.npy``."""
    p = Path(path)
    if p.is_file() and p.name == "embeddings.npy":
        p = p.parent
    emb_path, ids_path = p / "embeddings.npy", p / "item_ids.npy"
    for f in (emb_path, ids_path):
        if not f.is_file():
            raise FileNotFoundError(f"{p} is not an embedding folder: missing {f.name} (written by `resid famae` or `resid embed-text`)")
    emb = np.load(emb_path, mmap_mode="r" if mmap else None)
    ids = np.load(ids_path)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"{p}: embeddings.npy has shape {list(emb.shape)} but item_ids.npy has {len(ids)} ids")
    meta_path = p / "embeddings.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return ids, emb, meta


# ---- semantic IDs ------------------------------------------------------------------------
def save_sids(path: str | os.PathLike[str], item_ids: np.ndarray, codes: np.ndarray) -> Path:
    """Write ``sids.parquet``: item_id + c1..cL (int64). ``codes``: [N, L] int64."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    codes = np.asarray(codes, dtype=np.int64)
    ids = np.asarray(item_ids).astype(str)
    if codes.ndim != 2 or codes.shape[0] != len(ids):
        raise ValueError(f"save_sids: codes must be [N, L] with N = {len(ids)} ids, got shape {list(codes.shape)}")
    cols = {"item_id": pa.array(ids)}
    for level in range(codes.shape[1]):
        cols[f"c{level + 1}"] = pa.array(codes[:, level])
    table = pa.table(cols)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def duplicate_rows(codes: np.ndarray) -> int:
    """How many rows of an [N, L] integer table repeat an earlier row (0: all rows distinct).

    One int64 key per row (mixed radix over each column's range) when the key space fits, so
    the check is a 1-D sort rather than a row-wise one (1M x 3 SIDs: 1.0 s -> 0.1 s).
    """
    a = np.asarray(codes)
    if a.ndim != 2:
        raise ValueError(f"duplicate_rows: expected an [N, L] table, got shape {list(a.shape)}")
    if len(a) == 0 or a.shape[1] == 0:
        return max(len(a) - 1, 0)
    a = a.astype(np.int64, copy=False)
    lo = a.min(axis=0)
    span = a.max(axis=0) - lo + 1
    if float(np.prod(span.astype(np.float64))) >= 2.0**62:
        return len(a) - len(np.unique(a, axis=0))
    key = np.zeros(len(a), dtype=np.int64)
    for j in range(a.shape[1]):
        key = key * span[j] + (a[:, j] - lo[j])
    return len(a) - len(np.unique(key))


def load_sids(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``sids.parquet`` -> (item_ids [N] str, codes [N, L] int64). Rejects duplicate SIDs."""
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        p = p / "sids.parquet"
    if not p.is_file():
        raise FileNotFoundError(f"no semantic-ID file at {p} (written by `resid quantize`)")
    table = pq.read_table(p)
    names = table.column_names
    levels = sorted((c for c in names if c.startswith("c") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    if "item_id" not in names or not levels or levels != [f"c{i + 1}" for i in range(len(levels))]:
        raise ValueError(f"{p}: expected columns item_id, c1..cL, got {names}")
    ids = np.asarray(table.column("item_id").to_pylist()).astype(str)
    codes = np.stack([table.column(c).to_numpy().astype(np.int64) for c in levels], axis=1)
    dup = duplicate_rows(codes)
    if dup:
        raise ValueError(f"{p}: {dup} duplicate semantic IDs; every item needs a unique SID")
    return ids, codes
