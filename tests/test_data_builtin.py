"""Bundled real samples: contents, statistics against make_samples.py --check, builtin:<name>
specs, open_dataset caching, `resid datasets`."""
import csv
import gzip
import importlib.util
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from resid.data import is_prepared, list_builtin, load_prepared, open_dataset, prepare, resolve_raw

SHARED = Path("/work/shared/data")
# What `python /work/shared/data/make_samples.py --check` prints (also the table in its README).
CHECK = {
    "amazon-scientific": {"events": 58492, "users": 8317, "items_in_events": 4344, "items_in_items_csv": 4344,
                          "distinct_per_field": {"brand": 1546, "cat1": 25, "cat2": 191, "cat3": 435},
                          "empty_per_field": {"brand": 12, "cat1": 131, "cat2": 237, "cat3": 897},
                          "5core_events": 58492, "5core_users": 8317, "5core_items": 4344},
    "amazon-grocery": {"events": 121892, "users": 14681, "items_in_events": 8687, "items_in_items_csv": 8713,
                       "distinct_per_field": {"category": 57}, "empty_per_field": {"category": 0},
                       "5core_events": 80226, "5core_users": 6404, "5core_items": 4371},
}


def _rows(path):
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {n: open_dataset(f"builtin:{n}", cache_dir=cache) for n in CHECK}, cache


def test_list_builtin_matches_bundled_files():
    infos = {i["name"]: i for i in list_builtin()}
    assert sorted(infos) == sorted(CHECK)
    for name, info in infos.items():
        ev = _rows(Path(info["path"]) / "events.csv.gz")[1:]
        items = _rows(Path(info["path"]) / "items.csv.gz")
        assert (info["users"], info["items"], info["events"]) == (len({r[0] for r in ev}), len(items) - 1, len(ev))
        assert info["fields"] == [h for h in items[0][1:] if h not in ("title", "description", "text")]
        assert info["text"] == ("title" in items[0])


@pytest.mark.parametrize("name", list(CHECK))
def test_bundled_sample_statistics(prepared, name):
    """Raw counts counted independently from the bundled files, and the prepared (5-core)
    counts, against make_samples.py --check."""
    ref = CHECK[name]
    info = {i["name"]: i for i in list_builtin()}[name]
    ev = _rows(Path(info["path"]) / "events.csv.gz")[1:]
    items = _rows(Path(info["path"]) / "items.csv.gz")
    header, items = items[0], items[1:]
    assert len(ev) == ref["events"] and len({r[0] for r in ev}) == ref["users"]
    assert len({r[1] for r in ev}) == ref["items_in_events"] and len(items) == ref["items_in_items_csv"]
    for f, n in ref["distinct_per_field"].items():
        j = header.index(f)
        assert len({r[j] for r in items if r[j]}) == n
        assert sum(1 for r in items if not r[j]) == ref["empty_per_field"][f]
    ds = prepared[0][name]
    st = ds.stats
    assert (st["users"], st["items"], st["interactions"]) == (ref["5core_users"], ref["5core_items"], ref["5core_events"])
    assert (ds.num_users, ds.num_items, len(ds.seq_items)) == (ref["5core_users"], ref["5core_items"], ref["5core_events"])
    kept = set(ds.item_ids.tolist())
    for f, n in ref["distinct_per_field"].items():  # values of kept items (+ "" if missing) + pad + mask
        j = header.index(f)
        values = {r[j] for r in items if r[0] in kept}
        assert st["vocab_sizes"][f] == len(values) + 2 == len(ds.field_values[ds.fields.index(f)]) + 2
        if ref["5core_items"] == ref["items_in_items_csv"]:  # nothing dropped: make_samples' own counts
            assert len(values) == n + (1 if ref["empty_per_field"][f] else 0)
    assert st["density"] == pytest.approx(st["interactions"] / (st["users"] * st["items"]))
    assert st["avg_seq_len"] == pytest.approx(st["interactions"] / st["users"])
    assert st["min_seq_len"] >= 5 and st["duplicate_user_item_pairs"] == 0
    assert st["decisions"]["items_without_events"] == ref["items_in_items_csv"] - ref["items_in_events"]
    # every prepared sequence is the user's events in file order (the files are sorted by user
    # then time with ties in source order), restricted to kept items
    by_user: dict[str, list[str]] = {}
    for r in ev:
        by_user.setdefault(r[0], []).append(r[1])
    want = [[i for i in by_user[uid] if i in kept] for uid in ds.user_ids.tolist()]
    assert ds.seq_lengths().tolist() == [len(w) for w in want]
    assert ds.item_ids[np.asarray(ds.seq_items)].tolist() == [i for w in want for i in w]


@pytest.mark.skipif(not (SHARED / "make_samples.py").is_file(), reason="shared data not present")
@pytest.mark.parametrize("name", list(CHECK))
def test_against_make_samples_live(name):
    """make_samples.stats() run now on the shared CSVs equals the numbers above, and the bundled
    files hold the shared CSVs' content."""
    spec = importlib.util.spec_from_file_location("make_samples", SHARED / "make_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    live = mod.stats(str(SHARED / name))
    for k, v in CHECK[name].items():
        assert live[k] == v, k
    path = Path(resolve_raw(f"builtin:{name}"))
    shared_events = (SHARED / name / "events.csv").read_text(encoding="utf-8")
    assert gzip.decompress((path / "events.csv.gz").read_bytes()).decode() == shared_events
    shared_items = list(csv.reader(io.StringIO((SHARED / name / "items.csv").read_text(encoding="utf-8"))))
    bundled = _rows(path / "items.csv.gz")
    assert [r[: len(shared_items[0])] for r in bundled] == shared_items


@pytest.mark.skipif(not (SHARED / "amazon-scientific" / "original").is_dir(), reason="shared data not present")
def test_scientific_ships_item_text(prepared):
    ds = prepared[0]["amazon-scientific"]
    with gzip.open(SHARED / "amazon-scientific" / "original" / "Scientific.item.json.gz", "rt", encoding="utf-8") as f:
        meta = json.load(f)
    for row in (0, 1, 1234, ds.num_items - 1):
        m = meta[ds.item_ids[row]]
        want = "\n".join(p for p in (" ".join(m["title"].split()), " ".join(m["description"].split())) if p)
        assert ds.item_texts[row] == want
    assert ds.stats["has_text"] and prepared[0]["amazon-grocery"].item_texts is None


def test_paper_strict_item_filter_on_scientific(tmp_path):
    """required_fields = all four: items lacking any are dropped (counted independently)."""
    path = resolve_raw("builtin:amazon-scientific")
    items = _rows(path / "items.csv.gz")
    lacking = sum(1 for r in items[1:] if not all(r[1:5]))
    ds = prepare("builtin:amazon-scientific", required_fields=["brand", "cat1", "cat2", "cat3"])
    assert ds.stats["decisions"]["items_dropped_missing_fields"] == lacking > 0
    assert all((ds.field_values[j][ds.item_features[:, j] - 1] != "").all() for j in range(1, 5))
    assert ds.stats["users"] < 8317 and ds.stats["min_seq_len"] >= 5


def test_open_dataset_caches_and_accepts_every_spec(prepared, tmp_path):
    sets, cache = prepared
    ds = sets["amazon-scientific"]
    assert ds.path.parent == cache and is_prepared(ds.path) and isinstance(ds.seq_items, np.memmap)
    mtime = (ds.path / "seq_items.npy").stat().st_mtime_ns
    again = open_dataset("builtin:amazon-scientific", cache_dir=cache)  # loaded, not prepared again
    assert again.path == ds.path and (ds.path / "seq_items.npy").stat().st_mtime_ns == mtime
    other = open_dataset("amazon-scientific", cache_dir=cache, max_len=16)  # bare name, other settings
    assert other.path != ds.path and other.stats["settings"]["max_len"] == 16
    assert open_dataset(ds.path).path == ds.path  # a prepared folder is loaded as is
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == []  # no temporaries left
    with pytest.raises(FileNotFoundError, match="no builtin dataset 'nope'; available: builtin:amazon-grocery"):
        open_dataset("builtin:nope", cache_dir=cache)


def test_cli_datasets_and_prepare(tmp_path, capsys):
    from resid.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "builtin:amazon-scientific" in out and "8,317" in out and "brand,cat1,cat2,cat3" in out
    assert main(["prepare", "builtin:amazon-scientific", str(tmp_path / "p"), "--quiet"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["users"], st["items"], st["interactions"]) == (8317, 4344, 58492)
    assert load_prepared(tmp_path / "p").stats == st
    assert main(["prepare", "builtin:amazon-scientific", str(tmp_path / "q"), "--fields", "brand,cat1",
                 "--required-fields", "brand", "--quiet"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["fields"] == ["item_id", "brand", "cat1"] and st["decisions"]["items_dropped_missing_fields"] == 12
