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
    item_text_data.npy  optional: [B] uint8, UTF-8 bytes of all item texts concatenated
    item_text_offsets.npy  optional: [N+1] int64, item i's text is data[off[i]:off[i+1]]

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resid.io import atomic_write_dir

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
    # [N] object array of str (item text, "" where missing), or None when the data has no text
    item_texts: np.ndarray | None = None

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
        offsets = np.asarray(self.seq_offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        users = np.nonzero(lengths >= drop + 1)[0].astype(np.int64)
        ends = offsets[users + 1] - drop  # absolute position of each target
        hist = _windows(np.asarray(self.seq_items), ends, offsets[users], max_len)
        targets = np.asarray(self.seq_items)[ends].astype(np.int64)
        return Split(users=users, histories=hist, targets=targets)

    def train_samples(self, max_len: int = 32, cover_eval_items: bool = True) -> np.ndarray:
        """Sliding-window training samples over each user's training part (all but the last
        two items): one sample per position t >= 1, the ``max_len`` items ending at t,
        left-padded with -1. The last column is the target; the others are its history.

        ``cover_eval_items`` applies the paper's rule (Appendix C) "a target item in the
        evaluation set that does not appear in the training data is added to the training
        set": for every item that is a valid/test target but occurs nowhere in any user's
        training part, one extra sample is appended: the validation window of the first user
        (lowest row) whose validation target it is, else the test window of the first user
        whose test target it is. Those rows come last, in item-row order
        (see :meth:`eval_only_items`). Returns int64 [M, max_len]."""
        if max_len < 2:
            raise ValueError(f"train_samples: max_len must be >= 2, got {max_len}")
        offsets = np.asarray(self.seq_offsets, dtype=np.int64)
        items = np.asarray(self.seq_items)
        train_len = np.maximum(np.diff(offsets) - 2, 0)
        n_per_user = np.maximum(train_len - 1, 0)  # positions t = 1 .. train_len-1
        user_of = np.repeat(np.arange(len(train_len), dtype=np.int64), n_per_user)
        first = np.cumsum(n_per_user) - n_per_user  # index of each user's first sample
        t = np.arange(len(user_of), dtype=np.int64) - first[user_of] + 1
        ends = offsets[user_of] + t
        samples = _windows(items, ends + 1, offsets[user_of], max_len)
        if cover_eval_items:
            extra_ends = self._eval_only_windows()[1]
            if len(extra_ends):
                u = np.searchsorted(offsets, extra_ends, side="right") - 1
                samples = np.concatenate([samples, _windows(items, extra_ends + 1, offsets[u], max_len)])
        return samples

    def eval_only_items(self) -> np.ndarray:
        """Item rows that are a valid or test target but never occur in any training part,
        [K] int64 ascending (the items :meth:`train_samples` adds back, paper Appendix C)."""
        return self._eval_only_windows()[0]

    def _eval_only_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """(eval-only item rows [K], absolute seq position of the target to add for each [K])."""
        offsets = np.asarray(self.seq_offsets, dtype=np.int64)
        items = np.asarray(self.seq_items).astype(np.int64)
        in_train = self._train_mask(offsets)
        seen = np.zeros(self.num_items, dtype=bool)
        seen[items[in_train]] = True
        lengths = np.diff(offsets)
        best = np.full(self.num_items, -1, dtype=np.int64)
        # test first, then valid, so a validation window overrides a test one; within a kind,
        # iterate users backwards so the lowest user row is written last and wins.
        for drop in (1, 2):
            users = np.nonzero(lengths >= drop + 1)[0][::-1]
            pos = offsets[users + 1] - drop
            tgt = items[pos]
            keep = ~seen[tgt]
            best[tgt[keep]] = pos[keep]
        rows = np.nonzero(best >= 0)[0].astype(np.int64)
        return rows, best[rows]

    def _train_mask(self, offsets: np.ndarray) -> np.ndarray:
        """[E] bool: position lies in its user's training part (all but the last two)."""
        lengths = np.diff(offsets)
        pos_in_user = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        return pos_in_user < np.repeat(lengths - 2, lengths)

    def item_popularity(self) -> np.ndarray:
        """Training-part interaction count per item row (no valid/test leakage), [N] int64."""
        offsets = np.asarray(self.seq_offsets, dtype=np.int64)
        items = np.asarray(self.seq_items).astype(np.int64)
        return np.bincount(items[self._train_mask(offsets)], minlength=self.num_items).astype(np.int64)


def _windows(items: np.ndarray, stops: np.ndarray, starts: np.ndarray, max_len: int) -> np.ndarray:
    """Row r = items[max(starts[r], stops[r]-max_len) : stops[r]], left-padded with -1 to
    ``max_len``. ``stops``/``starts``: [R] absolute positions. Returns int64 [R, max_len]."""
    if len(stops) == 0:
        return np.empty((0, max_len), dtype=np.int64)
    # Gather from [-1, items...] so that out-of-window slots read the -1 at index 0 in the same
    # pass; int32 indices halve the memory traffic of the [R, max_len] index array.
    ext = np.empty(len(items) + 1, dtype=np.int64)
    ext[0] = -1
    ext[1:] = items
    dt = np.int32 if len(ext) + max_len < 2**31 else np.int64
    idx = (np.asarray(stops) - max_len + 1).astype(dt)[:, None] + np.arange(max_len, dtype=dt)[None, :]
    idx = np.where(idx > np.asarray(starts).astype(dt)[:, None], idx, 0)  # shifted: pos >= start
    return ext[idx]


# ---- persistence ------------------------------------------------------------------------
def save_prepared(ds: PreparedDataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``ds`` to ``out_dir`` atomically: a temporary sibling folder is filled, then
    renamed; an existing ``out_dir`` is replaced only once the new one is complete, and only if
    it is a prepared dataset or an empty folder."""
    out = Path(out_dir)
    if out.exists() and not (is_prepared(out) or (out.is_dir() and not any(out.iterdir()))):
        # never replace (and delete) a folder that is not a prepared dataset
        raise FileExistsError(f"save_prepared: {out} exists and is not a prepared dataset; choose another output folder")

    def fill(tmp: Path) -> None:
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
        if ds.item_texts is not None:
            data, offs = _encode_texts(ds.item_texts, ds.num_items)
            np.save(tmp / "item_text_data.npy", data)
            np.save(tmp / "item_text_offsets.npy", offs)

    atomic_write_dir(out, fill)
    return out


def _encode_texts(texts: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[N] str -> (utf-8 bytes [B] uint8, offsets [N+1] int64)."""
    if len(texts) != n:
        raise ValueError(f"save_prepared: item_texts has {len(texts)} entries for {n} items")
    encoded = [("" if t is None else str(t)).encode("utf-8") for t in texts]
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offs[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offs


def _decode_texts(data: np.ndarray, offs: np.ndarray) -> np.ndarray:
    raw = data.tobytes()
    return np.array([raw[offs[i] : offs[i + 1]].decode("utf-8") for i in range(len(offs) - 1)], dtype=object)


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
    texts = None
    if (p / "item_text_offsets.npy").is_file():
        texts = _decode_texts(np.load(p / "item_text_data.npy"), np.load(p / "item_text_offsets.npy"))
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
        item_texts=texts,
    )
