"""Readers: each takes a folder in one published format to a :class:`RawDataset`.

Formats (auto-detected by :func:`detect_format` from the files present):

``tidy``       ``items.{csv,parquet}[.gz]`` (``item_id`` + categorical fields; ``text``,
               ``title``, ``description`` columns are text) and ``events.{csv,parquet}[.gz]``
               (``user_id``, ``item_id``, ``timestamp``).
``amazon2023`` Amazon Reviews 2023: ``<Category>.jsonl[.gz]`` reviews (``user_id``,
               ``parent_asin``, ``timestamp`` in ms) + ``meta_<Category>.jsonl[.gz]``
               (``parent_asin``, ``store``, ``categories`` list, ``title``, ``description`` list).
               Fields: ``store``, ``cat1``..``cat3``.
``lcrec``      LC-Rec / LETTER json: ``X.inter.json`` {user: [items, chronological]} and
               ``X.item.json`` {item: {title, description, brand, categories}}, categories the
               Amazon path joined by "," (split on a comma not followed by a space).
               Fields: ``brand``, ``cat1``..``cat3``. Timestamps = position in the list.
``recbole``    RecBole atomic files ``X.inter`` / ``X.item``: tab-separated, ``name:type``
               headers; ``token`` -> field, ``token_seq`` -> its first ``seq_values`` values as
               fields ``name_1``.. (a ``title``/``text``/``description`` column is text instead),
               ``float``/``float_seq`` ignored.
"""
from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from resid.data.raw import TEXT_COLUMNS, RawDataset, decide, finish_events, finish_items, log

FORMATS = ("tidy", "amazon2023", "lcrec", "recbole")
_CAT_SPLIT = re.compile(r",(?! )")  # Amazon path joiner; names like "Tapes, Adhesives" keep ", "


def detect_format(folder: str | Path) -> str:
    """Name of the format whose files ``folder`` holds (see module docstring)."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"raw dataset folder {d} does not exist")
    names = sorted(p.name for p in d.iterdir())
    if _find(d, "items") and _find(d, "events"):
        return "tidy"
    if any(n.endswith(".inter.json") or n.endswith(".inter.json.gz") for n in names):
        return "lcrec"
    if any(re.fullmatch(r"meta_.+\.jsonl(\.gz)?", n) for n in names):
        return "amazon2023"
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    raise FileNotFoundError(
        f"{d}: no known dataset format; expected items.csv + events.csv (or .parquet), <X>.inter.json + <X>.item.json "
        f"(LC-Rec), <Cat>.jsonl + meta_<Cat>.jsonl (Amazon 2023) or <X>.inter + <X>.item (RecBole); found {names[:20]}"
    )


def read_raw(folder: str | Path, format: str | None = None, name: str | None = None, **options: Any) -> RawDataset:
    """Read ``folder`` (format auto-detected unless given) into a :class:`RawDataset`.
    ``options`` go to the reader (``duplicates=``, ``levels=``, ``seq_values=``)."""
    d = Path(folder)
    fmt = format or detect_format(d)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if not d.is_dir():
        raise FileNotFoundError(f"raw dataset folder {d} does not exist")
    reader = {"tidy": read_tidy, "amazon2023": read_amazon2023, "lcrec": read_lcrec, "recbole": read_recbole}[fmt]
    raw = reader(d, **options)
    if name:
        raw.name = name
    return raw


# ---- tidy CSV / parquet ------------------------------------------------------------------
def _find(d: Path, stem: str) -> Path | None:
    for ext in (".parquet", ".csv", ".csv.gz"):
        p = d / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _read_table(path: Path, required: list[str], numeric: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every column as str ("" = missing) except ``numeric`` ones, which the CSV parser may
    type itself (fast for clean int columns; a column with blanks or text stays str)."""
    try:
        if path.name.endswith(".parquet"):
            df = pd.read_parquet(path)
        else:
            header = pd.read_csv(path, nrows=0).columns
            dtypes = {c: str for c in header if c not in numeric}
            df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {list(df.columns)}")
    return df


def read_tidy(d: Path, duplicates: str = "error") -> RawDataset:
    items_path, events_path = _find(d, "items"), _find(d, "events")
    for stem, p in (("items", items_path), ("events", events_path)):
        if p is None:
            raise FileNotFoundError(f"{d}: missing {stem}.csv or {stem}.parquet")
    assert items_path is not None and events_path is not None
    decisions: dict[str, int] = {}
    items = _read_table(items_path, ["item_id"])
    text_cols = [c for c in items.columns if c in TEXT_COLUMNS]
    items = finish_items(items, str(items_path), decisions, duplicates)
    texts = items[text_cols].reset_index(drop=True) if text_cols else None
    items = items.drop(columns=text_cols)
    events = finish_events(_read_table(events_path, ["user_id", "item_id", "timestamp"], numeric=("timestamp",)), str(events_path), decisions)
    return RawDataset(name=d.name, format="tidy", items=items, events=events, texts=texts, decisions=decisions)


# ---- json helpers ------------------------------------------------------------------------
def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")  # type: ignore[return-value]
    return open(path, encoding="utf-8")


def _jsonl(path: Path, decisions: dict[str, int], on_bad_line: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line. A malformed line raises naming its line
    (``on_bad_line="error"``) or is skipped and counted (``"skip"``)."""
    from tqdm.auto import tqdm

    with _open_text(path) as f:
        lines = tqdm(f, desc=f"reading {path.name}", unit=" lines", disable=None, leave=False)  # stderr, off when not a tty
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as e:
                if on_bad_line == "error":
                    raise ValueError(f"{path}:{lineno}: malformed JSON line ({e}); pass on_bad_line='skip' to drop such lines") from None
                decide(decisions, "malformed_json_lines", 1, f"{path}:{lineno}: skipped a malformed JSON line", warn=True)
                continue
            yield lineno, obj


def _load_json(path: Path) -> Any:
    with _open_text(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None


def _split_levels(paths: list[list[str]], levels: int, decisions: dict[str, int], source: str) -> list[list[str]]:
    """Category paths -> the first ``levels`` levels, "" padded. When one root value starts at
    least 90% of the non-empty paths (the store root, e.g. "Industrial & Scientific"), it
    carries no information: the first level of every path is dropped, so cat1 always means
    "the level below the root". Paths under another root are counted (logged)."""
    firsts = Counter(p[0] for p in paths if p)
    non_empty = sum(firsts.values())
    if firsts and non_empty > 1:
        root, n = firsts.most_common(1)[0]
        if n >= 0.9 * non_empty:
            log.info("%s: dropped the category root %r (first level of %d of %d paths)", source, root, n, non_empty)
            decisions["category_root_dropped"] = 1
            decide(decisions, "category_paths_other_root", non_empty - n,
                   f"{source}: {non_empty - n} category paths start with another root than {root!r}; their first level was dropped too")
            paths = [p[1:] for p in paths]
    return [(p + [""] * levels)[:levels] for p in paths]


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(" ".join(str(x).split()) for x in v if x)
    return " ".join(str(v).split())


# ---- Amazon Reviews 2023 -----------------------------------------------------------------
def _pair(d: Path) -> tuple[Path, Path]:
    metas = sorted(p for p in d.iterdir() if re.fullmatch(r"meta_.+\.jsonl(\.gz)?", p.name))
    if len(metas) != 1:
        raise FileNotFoundError(f"{d}: expected exactly one meta_<Category>.jsonl[.gz], found {[p.name for p in metas]}")
    cat = re.sub(r"\.jsonl(\.gz)?$", "", metas[0].name[len("meta_") :])
    for ext in (".jsonl", ".jsonl.gz"):
        if (d / f"{cat}{ext}").is_file():
            return d / f"{cat}{ext}", metas[0]
    raise FileNotFoundError(f"{d}: found {metas[0].name} but no review file {cat}.jsonl[.gz]")


def read_amazon2023(d: Path, levels: int = 3, duplicates: str = "error", on_bad_line: str = "error") -> RawDataset:
    reviews_path, meta_path = _pair(d)
    decisions: dict[str, int] = {}
    ids, stores, paths, titles, descs = [], [], [], [], []
    for lineno, obj in _jsonl(meta_path, decisions, on_bad_line):
        asin = obj.get("parent_asin")
        if not asin:
            raise ValueError(f"{meta_path}:{lineno}: no 'parent_asin'")
        cats = obj.get("categories") or []
        if not isinstance(cats, list):
            raise ValueError(f"{meta_path}:{lineno}: 'categories' must be a list, got {type(cats).__name__}")
        ids.append(str(asin))
        stores.append(_text(obj.get("store")))
        paths.append([_text(c) for c in cats if _text(c)])
        titles.append(_text(obj.get("title")))
        descs.append(_text(obj.get("description")))
    if not ids:
        raise ValueError(f"{meta_path}: no item lines")
    cats = np.array(_split_levels(paths, levels, decisions, str(meta_path)), dtype=object).reshape(len(ids), levels)
    table = pd.DataFrame({"item_id": ids, "store": stores, **{f"cat{k + 1}": cats[:, k] for k in range(levels)}, "title": titles, "description": descs})
    table = finish_items(table, str(meta_path), decisions, duplicates)
    users, items, times = [], [], []
    for lineno, obj in _jsonl(reviews_path, decisions, on_bad_line):
        for key in ("user_id", "parent_asin"):
            if not obj.get(key):
                raise ValueError(f"{reviews_path}:{lineno}: no {key!r}")
        users.append(str(obj["user_id"]))
        items.append(str(obj["parent_asin"]))
        ts = obj.get("timestamp")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise ValueError(f"{reviews_path}:{lineno}: 'timestamp' must be a number (ms), got {ts!r}")
        times.append(np.nan if ts is None else ts)
    if not users:
        raise ValueError(f"{reviews_path}: no review lines")
    ev = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": pd.array(times, dtype="Float64")})
    events = finish_events(ev, str(reviews_path), decisions)
    return RawDataset(
        name=reviews_path.name.split(".")[0], format="amazon2023",
        items=table.drop(columns=["title", "description"]), events=events,
        texts=table[["title", "description"]].reset_index(drop=True), decisions=decisions,
    )


# ---- LC-Rec / LETTER json ----------------------------------------------------------------
def _one(d: Path, suffix: str) -> Path:
    found = sorted(p for p in d.iterdir() if p.name.endswith(suffix) or p.name.endswith(suffix + ".gz"))
    if len(found) != 1:
        raise FileNotFoundError(f"{d}: expected exactly one *{suffix}[.gz] file, found {[p.name for p in found]}")
    return found[0]


def read_lcrec(d: Path, levels: int = 3, duplicates: str = "error") -> RawDataset:
    inter_path, item_path = _one(d, ".inter.json"), _one(d, ".item.json")
    decisions: dict[str, int] = {}
    inter, meta = _load_json(inter_path), _load_json(item_path)
    if not isinstance(inter, dict) or not inter:
        raise ValueError(f"{inter_path}: expected a non-empty JSON object {{user: [items]}}")
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{item_path}: expected a non-empty JSON object {{item: {{title, description, brand, categories}}}}")
    ids, brands, paths, titles, descs = [], [], [], [], []
    for iid, m in meta.items():
        if not isinstance(m, dict):
            raise ValueError(f"{item_path}: item {iid!r} must map to an object, got {type(m).__name__}")
        cats = m.get("categories") or ""
        parts = cats if isinstance(cats, list) else _CAT_SPLIT.split(str(cats))
        ids.append(str(iid))
        brands.append(_text(m.get("brand")))
        paths.append([_text(c) for c in parts if _text(c)])
        titles.append(_text(m.get("title")))
        descs.append(_text(m.get("description")))
    cats = np.array(_split_levels(paths, levels, decisions, str(item_path)), dtype=object).reshape(len(ids), levels)
    table = pd.DataFrame({"item_id": ids, "brand": brands, **{f"cat{k + 1}": cats[:, k] for k in range(levels)}, "title": titles, "description": descs})
    table = finish_items(table, str(item_path), decisions, duplicates)
    users, items, times = [], [], []
    for uid, seq in inter.items():
        if not isinstance(seq, list):
            raise ValueError(f"{inter_path}: user {uid!r} must map to a list of items, got {type(seq).__name__}")
        users.extend([str(uid)] * len(seq))
        items.extend(str(i) for i in seq)
        times.extend(range(len(seq)))  # the lists are chronological; no clock time in this format
    if not users:
        raise ValueError(f"{inter_path}: every user's item list is empty")
    events = finish_events(pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.asarray(times, dtype=np.int64)}), str(inter_path), decisions)
    return RawDataset(
        name=inter_path.name.split(".")[0], format="lcrec",
        items=table.drop(columns=["title", "description"]), events=events,
        texts=table[["title", "description"]].reset_index(drop=True), decisions=decisions,
    )


# ---- RecBole atomic files ----------------------------------------------------------------
def _read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Tab-separated file with ``name:type`` headers -> (str DataFrame, {name: type})."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, quoting=3)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (no header)") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: cannot parse as tab-separated: {e}") from None
    types: dict[str, str] = {}
    for col in df.columns:
        if ":" not in col:
            raise ValueError(f"{path}: header {col!r} is not 'name:type' (RecBole atomic format)")
        name, typ = col.rsplit(":", 1)
        if typ not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(f"{path}: column {name!r} has unknown type {typ!r} (token, token_seq, float, float_seq)")
        types[name] = typ
    df.columns = list(types)
    return df, types


def read_recbole(d: Path, seq_values: int = 3, duplicates: str = "error") -> RawDataset:
    inter_path = _one(d, ".inter")
    item_path = inter_path.with_name(inter_path.name[: -len(".inter")] + ".item")
    decisions: dict[str, int] = {}
    inter, itypes = _read_atomic(inter_path)
    for col in ("user_id", "item_id"):
        if col not in inter.columns:
            raise ValueError(f"{inter_path}: missing column {col!r}; it has {list(inter.columns)}")
    if "timestamp" not in inter.columns:
        log.info("%s: no timestamp column; events are ordered by file order", inter_path)
        decisions["timestamps_from_file_order"] = 1
        inter["timestamp"] = np.arange(len(inter), dtype=np.int64)
    events = finish_events(inter, str(inter_path), decisions)
    if not item_path.is_file():
        # interactions only (common for RecBole datasets): items are the event items, no fields
        log.warning("%s: no %s; items get no fields besides item_id", d, item_path.name)
        decisions["no_item_file"] = 1
        items = pd.DataFrame({"item_id": pd.unique(events["item_id"].to_numpy())}, dtype=object)
        return RawDataset(name=inter_path.name[: -len(".inter")], format="recbole", items=items, events=events, decisions=decisions)
    meta, types = _read_atomic(item_path)
    if "item_id" not in meta.columns:
        raise ValueError(f"{item_path}: missing column 'item_id'; it has {list(meta.columns)}")
    cols: dict[str, Any] = {"item_id": meta["item_id"]}
    text: dict[str, Any] = {}
    for name, typ in types.items():
        if name == "item_id":
            continue
        if name in TEXT_COLUMNS and typ in ("token", "token_seq"):
            text[name] = meta[name].map(lambda s: " ".join(str(s).split()))
        elif typ == "token":
            cols[name] = meta[name]
        elif typ == "token_seq":
            parts = meta[name].map(lambda s: str(s).split())
            for k in range(seq_values):
                cols[f"{name}_{k + 1}"] = parts.map(lambda p, k=k: p[k] if len(p) > k else "")
        else:
            decisions.setdefault("ignored_float_columns", 0)
            decisions["ignored_float_columns"] += 1
            log.info("%s: ignored %s column %r", item_path, typ, name)
    table = pd.DataFrame({**cols, **text})
    table = finish_items(table, str(item_path), decisions, duplicates)
    texts = table[list(text)].reset_index(drop=True) if text else None
    return RawDataset(name=inter_path.name[: -len(".inter")], format="recbole", items=table.drop(columns=list(text)), events=events, texts=texts, decisions=decisions)
