"""Raw dataset -> prepared dataset, following the paper's protocol (Appendix C):
item-field filtering, iterative k-core on users and items, chronological sequences (ties keep
file order), per-field vocabularies, leave-one-out, sliding windows; every change counted."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from resid.data.dataset import ITEM_FIELD, PreparedDataset, is_prepared, save_prepared
from resid.data.raw import TEXT_COLUMNS, RawDataset, decide, log
from resid.data.readers import read_raw


def kcore(users: np.ndarray, items: np.ndarray, min_count: int) -> tuple[np.ndarray, int]:
    """Iterative k-core: drop events of users or items with fewer than ``min_count`` events
    until none is left to drop. ``users``/``items``: [E] int64 codes >= 0.
    Returns (keep mask [E] bool, number of rounds that dropped something)."""
    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    if min_count <= 1:
        return keep, 0
    while True:
        uc = np.bincount(users[keep], minlength=int(users.max()) + 1 if len(users) else 0)
        ic = np.bincount(items[keep], minlength=int(items.max()) + 1 if len(items) else 0)
        new = keep & (uc[users] >= min_count) & (ic[items] >= min_count)
        if new.sum() == keep.sum():
            return keep, rounds
        keep, rounds = new, rounds + 1


def prepare(
    raw: RawDataset | str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    fields: Sequence[str] | None = None,
    required_fields: Sequence[str] | None = None,
    min_count: int = 5,
    max_len: int = 32,
    format: str | None = None,
    name: str | None = None,
    duplicates: str = "error",
) -> PreparedDataset:
    """Prepare ``raw`` (a :class:`RawDataset`, a raw folder or ``builtin:<name>``) and, when
    ``out_dir`` is given, write it there atomically (complete or not at all).

    fields:          categorical item fields to keep, in order (default: all of the raw data's).
    required_fields: items with an empty value in any of these are dropped, as the paper does
                     (default: all chosen fields, except for the bundled samples, whose
                     ``dataset.json`` says ``[]``); ``[]`` keeps every item, and a missing
                     value becomes the field's own value "".
    min_count:       k of the iterative k-core on users and items (paper: 5).
    max_len:         sliding-window length, used for the sample count in ``stats.json``.
    duplicates:      conflicting duplicate item rows: "error" or keep the "first".
    """
    if min_count < 1:
        raise ValueError(f"prepare: min_count must be >= 1, got {min_count}")
    if max_len < 2:
        raise ValueError(f"prepare: max_len must be >= 2, got {max_len}")
    if out_dir is not None:  # fail before the work, not after (save_prepared checks again)
        out = Path(out_dir)
        if out.exists() and not (is_prepared(out) or (out.is_dir() and not any(out.iterdir()))):
            raise FileExistsError(f"prepare: {out} exists and is not a prepared dataset; choose another output folder")
    if not isinstance(raw, RawDataset):
        from resid.data.builtin import builtin_defaults, resolve_raw

        folder = resolve_raw(raw)
        if required_fields is None:  # a bundled sample carries its own default (dataset.json)
            required_fields = builtin_defaults(folder).get("required_fields")
        raw = read_raw(folder, format=format, duplicates=duplicates)
    decisions = dict(raw.decisions)
    src = raw.name
    available = raw.fields
    if isinstance(fields, str) or isinstance(required_fields, str):
        raise ValueError("prepare: fields and required_fields are lists of names, e.g. ['brand', 'cat1'], not one string")
    if fields is None:
        fields = available
    fields = [f for f in fields if f]  # tolerate "a,,b" from the CLI
    unknown = [f for f in fields if f not in available]
    if unknown:
        raise ValueError(f"prepare: fields {unknown} are not item fields of {src}; available: {available}")
    if len(set(fields)) != len(fields) or ITEM_FIELD in fields:
        raise ValueError(f"prepare: fields must be distinct and exclude {ITEM_FIELD!r}, got {list(fields)}")
    required = list(fields) if required_fields is None else [f for f in required_fields if f]
    bad = [f for f in required if f not in fields]
    if bad:
        raise ValueError(f"prepare: required_fields {bad} are not among the chosen fields {list(fields)}")

    # 1. item-field filtering (paper: items lacking any of the features are filtered out)
    items = raw.items[[ITEM_FIELD, *fields]]
    lacking = np.zeros(len(items), dtype=bool)
    for f in required:
        lacking |= (items[f] == "").to_numpy()
    decide(decisions, "items_dropped_missing_fields", int(lacking.sum()),
           f"{src}: dropped {int(lacking.sum())} of {len(items)} items lacking a required field {required}")
    missing_values = {f: int((items.loc[~lacking, f] == "").sum()) for f in fields}

    # 2. events -> item rows; unknown items and items dropped above lose their events
    events = raw.events
    row_of = pd.Index(items[ITEM_FIELD]).get_indexer(events[ITEM_FIELD])
    unknown_ev = row_of < 0
    decide(decisions, "events_on_unknown_items", int(unknown_ev.sum()),
           f"{src}: dropped {int(unknown_ev.sum())} events on items absent from the item table", warn=True)
    dropped_ev = ~unknown_ev & lacking[np.maximum(row_of, 0)]
    decide(decisions, "events_on_dropped_items", int(dropped_ev.sum()),
           f"{src}: dropped {int(dropped_ev.sum())} events on items dropped for missing fields")
    ok = ~unknown_ev & ~dropped_ev
    ev_item = row_of[ok].astype(np.int64)
    ev_user_codes, user_names = pd.factorize(events["user_id"].to_numpy()[ok], sort=False)
    ev_user = ev_user_codes.astype(np.int64)
    ev_time = events["timestamp"].to_numpy()[ok]
    if len(ev_item) == 0:
        raise ValueError(f"prepare: no event of {src} is left after item filtering ({int(unknown_ev.sum())} on unknown items, "
                         f"{int(dropped_ev.sum())} on items lacking {required}); check item ids and required_fields")

    has_events = np.zeros(len(items), dtype=bool)
    has_events[ev_item] = True
    decide(decisions, "items_without_events", int((~lacking & ~has_events).sum()),
           f"{src}: dropped {int((~lacking & ~has_events).sum())} items that have no event")

    # 3. iterative k-core on users and items
    keep, rounds = kcore(ev_user, ev_item, min_count)
    decisions["kcore_rounds"] = rounds
    decide(decisions, "kcore_dropped_events", int((~keep).sum()),
           f"{src}: {min_count}-core filtering dropped {int((~keep).sum())} of {len(keep)} events in {rounds} rounds")
    if not keep.any():
        raise ValueError(f"prepare: the {min_count}-core filter left no events of {src} ({len(keep)} events, "
                         f"{len(user_names)} users before it); lower min_count or use more data")
    user_before, user_after = np.bincount(ev_user) > 0, np.bincount(ev_user[keep], minlength=len(user_names)) > 0
    decisions["kcore_dropped_users"] = int(user_before.sum() - user_after.sum())
    decisions["kcore_dropped_items"] = int((np.bincount(ev_item) > 0).sum() - (np.bincount(ev_item[keep]) > 0).sum())
    ev_user, ev_item, ev_time = ev_user[keep], ev_item[keep], ev_time[keep]

    # 4. keep items with events (file order) and users (order of first appearance)
    item_kept = np.zeros(len(items), dtype=bool)
    item_kept[ev_item] = True
    new_item = np.cumsum(item_kept) - 1
    ev_item = new_item[ev_item]
    # factorize numbered users by first appearance; the k-core keeps that relative order
    ev_user = (np.cumsum(user_after) - 1)[ev_user]
    user_ids = np.asarray(user_names)[user_after].astype(str)

    # 5. chronological sequences; stable sorts keep the file order of equal timestamps
    order = np.argsort(ev_time, kind="stable")
    order = order[np.argsort(ev_user[order], kind="stable")]
    seq_items = ev_item[order].astype(np.int64)
    counts = np.bincount(ev_user, minlength=len(user_ids))
    seq_offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=seq_offsets[1:])

    # 6. vocabularies: 0 = pad, 1..n values (sorted), n+1 = mask
    kept_items = items[item_kept].reset_index(drop=True)
    item_ids = kept_items[ITEM_FIELD].to_numpy().astype(str)
    n_items = len(item_ids)
    feats = np.empty((n_items, len(fields) + 1), dtype=np.int64)
    feats[:, 0] = np.arange(1, n_items + 1)
    field_values: list[np.ndarray] = [item_ids]
    vocab_sizes = [n_items + 2]
    for j, f in enumerate(fields, start=1):
        col = kept_items[f].to_numpy().astype(str)
        values = np.unique(col)
        feats[:, j] = np.searchsorted(values, col) + 1
        field_values.append(values)
        vocab_sizes.append(len(values) + 2)

    # 7. item text (title / description / text joined by newlines), if the data has any
    texts = None
    if raw.texts is not None and len(raw.texts.columns):
        t = raw.texts[item_kept].reset_index(drop=True)
        cols = [c for c in TEXT_COLUMNS[1:] + TEXT_COLUMNS[:1] if c in t.columns]  # title, description, text
        joined = ["\n".join(p for p in parts if p) for parts in zip(*(t[c].astype(str).tolist() for c in cols))]
        texts = np.array(joined, dtype=object)
        if not any(joined):
            log.info("%s: the text columns %s are empty for every item; no item text kept", src, cols)
            texts = None

    ds = PreparedDataset(
        name=name or raw.name, fields=[ITEM_FIELD, *fields], item_ids=item_ids, item_features=feats,
        vocab_sizes=vocab_sizes, field_values=field_values, user_ids=user_ids,
        seq_offsets=seq_offsets, seq_items=seq_items, item_texts=texts,
    )
    ds.stats = _stats(ds, raw, decisions, missing_values, required, min_count, max_len)
    log.info("%s: %d users, %d items, %d interactions", ds.name, ds.num_users, ds.num_items, len(seq_items))
    if out_dir is not None:
        save_prepared(ds, out_dir)
        ds.path = Path(out_dir)
    return ds


def _stats(
    ds: PreparedDataset, raw: RawDataset, decisions: dict[str, int], missing_values: dict[str, int],
    required: list[str], min_count: int, max_len: int,
) -> dict[str, Any]:
    n_ev = len(ds.seq_items)
    lengths = ds.seq_lengths()
    user_of = np.repeat(np.arange(ds.num_users, dtype=np.int64), lengths)
    keys = np.sort(user_of * ds.num_items + np.asarray(ds.seq_items))
    dup_pairs = int((keys[1:] == keys[:-1]).sum())
    eval_only = ds.eval_only_items()
    stats: dict[str, Any] = {
        "name": ds.name,
        "format": raw.format,
        "users": ds.num_users,
        "items": ds.num_items,
        "interactions": int(n_ev),
        "density": float(n_ev / (ds.num_users * ds.num_items)),
        "avg_seq_len": float(lengths.mean()),
        "min_seq_len": int(lengths.min()),
        "max_seq_len": int(lengths.max()),
        "fields": list(ds.fields),
        "vocab_sizes": {f: int(v) for f, v in zip(ds.fields, ds.vocab_sizes)},
        "missing_values": missing_values,
        "raw_items": int(len(raw.items)),
        "raw_events": int(len(raw.events)),
        "raw_users": int(len(pd.unique(raw.events["user_id"].to_numpy()))),
        "settings": {"required_fields": required, "min_count": min_count, "max_len": max_len},
        "duplicate_user_item_pairs": int(dup_pairs),
        "valid_users": int((lengths >= 3).sum()),
        "test_users": int((lengths >= 2).sum()),
        "train_samples_sliding": int(np.maximum(lengths - 3, 0).sum()),
        "eval_only_items_added_to_train": int(len(eval_only)),
        "has_text": ds.item_texts is not None,
        "items_without_text": int(sum(1 for t in ds.item_texts if not t)) if ds.item_texts is not None else ds.num_items,
        "decisions": dict(sorted(decisions.items())),
    }
    return stats
