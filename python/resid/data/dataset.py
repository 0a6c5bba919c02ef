"""The prepared dataset every stage reads: items with categorical fields, and each user's
chronological item sequence, plus the paper's leave-one-out splits (Appendix C).

On disk (a folder, written atomically by :func:`save_prepared`):

    meta.json           format version, name, fields, vocab_sizes
    stats.json          users, items, interactions, density, avg_seq_len, vocab sizes, ...
    item_ids.npy        [N]   original item ids (str)
    item_features.npy   [N, J] int64 field tokens
    user_ids.npy        [U]   original user ids (str)
    seq_offsets.npy     [U+1] int64 CSR offsets into seq_items
    seq_items.npy       [E]   int64 item rows, chronological per user
    field_values/<field>.npy  original value of token t at index t-1 (str)

Token conventions, per field j (field 0 is always ``item_id``):
    0                    padding
    1 .. n_j             values (for ``item_id``: token = item row + 1)
    n_j + 1              that field's mask token
    vocab_sizes[j] = n_j + 2
Item rows are 0-based indices into ``item_ids``; padded sequence arrays use -1.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
PAD = 0
ITEM_FIELD = "item_id"


@dataclass
class Split:
    """Leave-one-out evaluation split: ``histories[u]`` (-1 left-padded, [U, T]) -> ``targets[u]``."""

    users: np.ndarray  # [U] int64 user rows
    histories: np.ndarray  # [U, T] int64 item rows, left-padded with -1, most recent last
    targets: np.ndarray  # [U] int64 item rows


@dataclass
class PreparedDataset:
    name: str
    fields: list[str]
    item_ids: np.ndarray
    item_features: np.ndarray
    vocab_sizes: list[int]
    field_values: list[np.ndarray]
    user_ids: np.ndarray
    seq_offsets: np.ndarray
    seq_items: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ---- sizes -----------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def num_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def mask_token(self, j: int) -> int:
        """Token id of field ``j``'s mask token (the last index of its vocabulary)."""
        return self.vocab_sizes[j] - 1

    def sequence(self, u: int) -> np.ndarray:
        """User ``u``'s chronological item rows."""
        return np.asarray(self.seq_items[self.seq_offsets[u] : self.seq_offsets[u + 1]])

    def seq_lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.seq_offsets))

    # ---- leave-one-out splits (paper Appendix C) --------------------------------------
    def split(self, which: str, max_len: int = 32) -> Split:
        """``test``: history = all but the last item, target = last item.
        ``valid``: history = all but the last two, target = second-to-last.
        Histories keep at most the ``max_len`` most recent items."""
        if which not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {which!r}")
        drop = 1 if which == "test" else 2
        lengths = self.seq_lengths()
        users = np.nonzero(lengths >= drop + 1)[0].astype(np.int64)
        hist = np.full((len(users), max_len), -1, dtype=np.int64)
        targets = np.empty(len(users), dtype=np.int64)
        offsets = np.asarray(self.seq_offsets)
        items = np.asarray(self.seq_items)
        for i, u in enumerate(users):
            end = offsets[u + 1] - drop  # target position
            start = max(offsets[u], end - max_len)
            h = items[start:end]
            if len(h):
                hist[i, max_len - len(h) :] = h
            targets[i] = items[end]
        return Split(users=users, histories=hist, targets=targets)

    def train_samples(self, max_len: int = 32) -> np.ndarray:
        """Sliding-window training samples over each user's training part (all but the last
        two items): one sample per position t >= 1, the ``max_len`` items ending at t,
        left-padded with -1. The last column is the target; the others are its history.
        Returns int64 [M, max_len]."""
        offsets = np.asarray(self.seq_offsets)
        items = np.asarray(self.seq_items)
        rows: list[np.ndarray] = []
        for u in range(self.num_users):
            s = items[offsets[u] : offsets[u + 1] - 2]
            for t in range(1, len(s)):
                w = s[max(0, t + 1 - max_len) : t + 1]
                row = np.full(max_len, -1, dtype=np.int64)
                row[max_len - len(w) :] = w
                rows.append(row)
        if not rows:
            return np.empty((0, max_len), dtype=np.int64)
        return np.stack(rows)

    def item_popularity(self) -> np.ndarray:
        """Training-part interaction count per item row (no valid/test leakage), [N] int64."""
        offsets = np.asarray(self.seq_offsets)
        items = np.asarray(self.seq_items)
        counts = np.zeros(self.num_items, dtype=np.int64)
        for u in range(self.num_users):
            np.add.at(counts, items[offsets[u] : offsets[u + 1] - 2], 1)
        return counts


# ---- persistence ------------------------------------------------------------------------
def _atomic_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def save_prepared(ds: PreparedDataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``ds`` to ``out_dir`` atomically: a temporary sibling folder is filled, then
    renamed; an existing ``out_dir`` is replaced only once the new one is complete."""
    out = Path(out_dir)
    tmp = _atomic_dir(out)
    try:
        meta = {
            "format_version": FORMAT_VERSION,
            "name": ds.name,
            "fields": list(ds.fields),
            "vocab_sizes": [int(v) for v in ds.vocab_sizes],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "stats.json").write_text(json.dumps(ds.stats, indent=2))
        np.save(tmp / "item_ids.npy", np.asarray(ds.item_ids).astype(str))
        np.save(tmp / "item_features.npy", np.ascontiguousarray(ds.item_features, dtype=np.int64))
        np.save(tmp / "user_ids.npy", np.asarray(ds.user_ids).astype(str))
        np.save(tmp / "seq_offsets.npy", np.asarray(ds.seq_offsets, dtype=np.int64))
        np.save(tmp / "seq_items.npy", np.asarray(ds.seq_items, dtype=np.int64))
        (tmp / "field_values").mkdir()
        for name, values in zip(ds.fields, ds.field_values):
            np.save(tmp / "field_values" / f"{name}.npy", np.asarray(values).astype(str))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_prepared(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / "meta.json").is_file() and (p / "seq_items.npy").is_file()


def load_prepared(path: str | os.PathLike[str]) -> PreparedDataset:
    """Load a prepared dataset; the large arrays are memory-mapped, not parsed."""
    p = Path(path)
    if not is_prepared(p):
        raise FileNotFoundError(
            f"{p} is not a prepared dataset (no meta.json / seq_items.npy); run `resid prepare RAW_DIR {p}` first"
        )
    meta = json.loads((p / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{p}: prepared with format version {meta.get('format_version')}, this resid reads "
            f"version {FORMAT_VERSION}; prepare the dataset again"
        )
    fields = list(meta["fields"])
    stats_path = p / "stats.json"
    return PreparedDataset(
        name=meta["name"],
        fields=fields,
        item_ids=np.load(p / "item_ids.npy"),
        item_features=np.load(p / "item_features.npy", mmap_mode="r"),
        vocab_sizes=[int(v) for v in meta["vocab_sizes"]],
        field_values=[np.load(p / "field_values" / f"{f}.npy") for f in fields],
        user_ids=np.load(p / "user_ids.npy"),
        seq_offsets=np.load(p / "seq_offsets.npy"),
        seq_items=np.load(p / "seq_items.npy", mmap_mode="r"),
        stats=json.loads(stats_path.read_text()) if stats_path.exists() else {},
        path=p,
    )
