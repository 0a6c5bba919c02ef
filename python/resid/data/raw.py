"""The one raw representation every reader produces, before filtering and preparation."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

log = logging.getLogger("resid.data")

# Item columns holding free text, never treated as categorical fields.
TEXT_COLUMNS = ("text", "title", "description")


@dataclass
class RawDataset:
    """A dataset as read from disk, unfiltered.

    items:  DataFrame, column ``item_id`` (str, unique) then one str column per categorical
            field ("" = missing); row order = file order.
    events: DataFrame with ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float64 or
            int64); row order = file order (ties in time keep it).
    texts:  DataFrame aligned row by row with ``items``, one str column per text column
            (``title``, ``description``, ``text``; "" = missing), or None when there is none.
    decisions: counts of what the reader changed (dropped lines, duplicates, ...), merged into
            ``stats.json`` by :func:`resid.data.prepare`.
    """

    name: str
    format: str
    items: pd.DataFrame
    events: pd.DataFrame
    texts: pd.DataFrame | None = None
    decisions: dict[str, int] = field(default_factory=dict)

    @property
    def fields(self) -> list[str]:
        return [c for c in self.items.columns if c != "item_id"]


def decide(decisions: dict[str, int], key: str, count: int, message: str, warn: bool = False) -> None:
    """Record a counted decision and log it when something happened: INFO for steps of the
    protocol (k-core, field filtering), WARNING (``warn``) for defects of the input data."""
    decisions[key] = decisions.get(key, 0) + int(count)
    if count:
        log.log(logging.WARNING if warn else logging.INFO, message)


def finish_items(
    items: pd.DataFrame, source: str, decisions: dict[str, int], duplicates: str = "error"
) -> pd.DataFrame:
    """Normalise an item table (str cells, "" for missing, stripped) and resolve duplicate
    ``item_id`` rows: identical duplicates are dropped (counted); conflicting ones raise
    (``duplicates="error"``) or keep the first row (``duplicates="first"``, counted)."""
    if duplicates not in ("error", "first"):
        raise ValueError(f"duplicates must be 'error' or 'first', got {duplicates!r}")
    if len(items) == 0:
        raise ValueError(f"{source}: the item table is empty")
    items = items.copy()
    for c in items.columns:
        nested = (items[c].map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).to_numpy()
                  if items[c].dtype == object else np.zeros(len(items), dtype=bool))  # only object columns can nest
        if nested.any():
            r = int(np.argmax(nested))
            raise ValueError(
                f"{source}: column {c!r} must hold one value per item, row {r} holds {type(items[c].iloc[r]).__name__} "
                f"{items[c].iloc[r]!r}; split it into one column per level (e.g. cat1, cat2, cat3)"
            )
        items[c] = _clean_str(items[c])
    blank = items["item_id"] == ""
    if blank.any():
        raise ValueError(f"{source}: {int(blank.sum())} item rows have an empty item_id (first at row {int(np.argmax(blank.to_numpy()))})")
    dup = items.duplicated("item_id", keep="first")
    if dup.any():
        exact = items.duplicated(keep="first")
        decide(decisions, "duplicate_item_rows_identical", int(exact.sum()), f"{source}: dropped {int(exact.sum())} identical duplicate item rows", warn=True)
        items = items[~exact]
        conflict = items.duplicated("item_id", keep=False)
        if conflict.any():
            ids = items.loc[conflict, "item_id"].unique()
            if duplicates == "error":
                example = items[items["item_id"] == ids[0]]
                raise ValueError(
                    f"{source}: {len(ids)} item ids have duplicate rows with conflicting fields, e.g. item_id "
                    f"{ids[0]!r}: {example.drop(columns='item_id').to_dict('records')}; fix the file or pass duplicates='first'"
                )
            n = int(items.duplicated("item_id", keep="first").sum())
            decide(decisions, "duplicate_item_rows_conflicting", n, f"{source}: kept the first of conflicting rows, dropped {n} rows for {len(ids)} item ids", warn=True)
            items = items[~items.duplicated("item_id", keep="first")]
    return items.reset_index(drop=True)


def _clean_str(col: pd.Series) -> pd.Series:
    """Cells as str with surrounding whitespace stripped; NaN/None -> "". Integral floats
    (an int column with nulls, from parquet) print as ints: 3.0 -> "3"."""
    if pd.api.types.is_string_dtype(col) and col.dtype != object:  # vectorised (pyarrow strings)
        return col.fillna("").str.strip().astype(object)
    if pd.api.types.is_float_dtype(col):
        f = col.astype(np.float64)
        ok = f.notna()
        if bool((f[ok] == np.floor(f[ok])).all()):
            out = pd.Series("", index=col.index, dtype=object)
            out[ok] = f[ok].astype(np.int64).astype(str)
            return out
    values = col.to_numpy(dtype=object)
    out = np.array(["" if (v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA) else str(v).strip() for v in values], dtype=object)
    return pd.Series(out, index=col.index, dtype=object)


def finish_events(events: pd.DataFrame, source: str, decisions: dict[str, int]) -> pd.DataFrame:
    """Check and normalise an event table: str ids, numeric timestamps (ints stay int64,
    ISO dates become epoch seconds); events with a missing user/item/timestamp are dropped
    and counted; an empty table or a non-numeric timestamp raises."""
    if len(events) == 0:
        raise ValueError(f"{source}: the event table is empty")
    events = events[["user_id", "item_id", "timestamp"]].copy()
    events["user_id"] = _clean_str(events["user_id"])
    events["item_id"] = _clean_str(events["item_id"])
    ts = events["timestamp"]
    missing_ts = ts.isna().to_numpy() | (ts.astype(str).str.strip() == "").to_numpy()
    missing_id = ((events["user_id"] == "") | (events["item_id"] == "")).to_numpy()
    decide(decisions, "events_missing_timestamp", int(missing_ts.sum()), f"{source}: dropped {int(missing_ts.sum())} events with no timestamp", warn=True)
    decide(decisions, "events_missing_id", int((missing_id & ~missing_ts).sum()), f"{source}: dropped {int((missing_id & ~missing_ts).sum())} events with an empty user_id or item_id", warn=True)
    events = events[~(missing_ts | missing_id)].reset_index(drop=True)
    if len(events) == 0:
        raise ValueError(f"{source}: no event has a user_id, an item_id and a timestamp")
    events["timestamp"] = _to_time(events["timestamp"], source)
    return events


def _to_time(ts: pd.Series, source: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(ts):
        raise ValueError(f"{source}: column 'timestamp' must be numeric (or ISO dates), got booleans")
    if pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
        if pd.api.types.is_integer_dtype(ts):
            return ts.astype(np.int64)
        f = ts.astype(np.float64)
        return f.astype(np.int64) if bool((f == np.floor(f)).all()) and bool((f.abs() < 2**62).all()) else f
    num = pd.to_numeric(ts, errors="coerce")
    if not num.isna().any():
        as_int = num.astype(np.int64)
        return as_int if (as_int == num).all() else num.astype(np.float64)
    try:
        dt = pd.to_datetime(ts, errors="raise", utc=True, format="ISO8601")
        secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return pd.Series(np.asarray(secs, dtype=np.int64), index=ts.index)
    except (ValueError, TypeError):
        bad = int(np.argmax(num.isna().to_numpy()))
        raise ValueError(
            f"{source}: column 'timestamp' must be numeric (or ISO dates); row {bad} has {ts.iloc[bad]!r}"
        ) from None
