"""Each reader against small files written in its real published format."""
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resid.data import detect_format, prepare, read_raw

SHARED = Path("/work/shared/data")
PKG = Path(__file__).resolve().parents[1] / "python" / "resid" / "datasets"


def _write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)


def _meta(asin, store, cats, title="", desc=()):
    # Amazon Reviews 2023 item metadata, field for field (McAuley lab schema)
    return {"main_category": "Industrial & Scientific", "title": title, "average_rating": 4.5, "rating_number": 12,
            "features": ["f1"], "description": list(desc), "price": None, "images": [], "videos": [],
            "store": store, "categories": cats, "details": {"Brand": store}, "parent_asin": asin, "bought_together": None}


def _review(user, asin, ts):
    return {"rating": 5.0, "title": "ok", "text": "works", "images": [], "asin": asin + "X", "parent_asin": asin,
            "user_id": user, "timestamp": ts, "helpful_vote": 0, "verified_purchase": True}


ROOT = "Industrial & Scientific"


def write_amazon2023(d: Path, gz=True):
    metas = [
        _meta("B01", "Acme", [ROOT, "Lab", "Glass", "Beakers"], "Beaker 250 ml", ["Borosilicate.", "Pack of 2."]),
        _meta("B02", "Acme", [ROOT, "Lab", "Glass"], "Flask"),
        _meta("B03", "", [ROOT, "Tapes, Adhesives & Sealants", "Tapes", "Duct"], "Tape"),
        _meta("B04", "Zed", [], "Widget"),
    ]
    reviews = [_review("U1", "B02", 1_600_000_000_500), _review("U1", "B01", 1_600_000_000_100),
               _review("U2", "B01", 1_600_000_000_000), _review("U2", "B03", 1_600_000_000_000),
               _review("U1", "B99", 1_600_000_000_900)]
    _write_jsonl(d / ("meta_Industrial_and_Scientific.jsonl" + (".gz" if gz else "")), metas, gz)
    _write_jsonl(d / ("Industrial_and_Scientific.jsonl" + (".gz" if gz else "")), reviews, gz)


def test_amazon2023_reader(tmp_path):
    write_amazon2023(tmp_path)
    assert detect_format(tmp_path) == "amazon2023"
    raw = read_raw(tmp_path)
    assert raw.name == "Industrial_and_Scientific" and raw.fields == ["store", "cat1", "cat2", "cat3"]
    assert raw.items.values.tolist() == [
        ["B01", "Acme", "Lab", "Glass", "Beakers"], ["B02", "Acme", "Lab", "Glass", ""],
        ["B03", "", "Tapes, Adhesives & Sealants", "Tapes", "Duct"], ["B04", "Zed", "", "", ""]]
    assert raw.decisions["category_root_dropped"] == 1 and raw.decisions["category_paths_other_root"] == 0
    assert raw.texts["title"].tolist() == ["Beaker 250 ml", "Flask", "Tape", "Widget"]
    assert raw.texts["description"].tolist()[0] == "Borosilicate. Pack of 2."
    assert raw.events["timestamp"].dtype == np.int64
    assert raw.events.values.tolist()[:2] == [["U1", "B02", 1_600_000_000_500], ["U1", "B01", 1_600_000_000_100]]
    ds = prepare(raw, required_fields=[], min_count=1)
    assert ds.sequence(0).tolist() == [0, 1]  # U1: B01 (t=..100) before B02 (..500); B99 unknown
    assert ds.sequence(1).tolist() == [0, 2]  # U2: tie at ..000 keeps file order B01, B03
    assert ds.stats["decisions"]["events_on_unknown_items"] == 1
    assert ds.item_texts.tolist() == ["Beaker 250 ml\nBorosilicate. Pack of 2.", "Flask", "Tape"]
    # paper rule: items lacking any field dropped (B02 has no cat3, B03 no store)
    assert prepare(raw, min_count=1).item_ids.tolist() == ["B01"]


def test_category_root_rule():
    from resid.data.readers import _split_levels

    d = {}
    paths = [["R", "a", "b"]] * 9 + [["Other", "x"]]  # 90% share the root -> drop level 1 everywhere
    assert _split_levels(paths, 2, d, "t") == [["a", "b"]] * 9 + [["x", ""]]
    assert d == {"category_root_dropped": 1, "category_paths_other_root": 1}
    d = {}
    paths = [["R", "a"]] * 8 + [["S", "x"]] * 2  # 80%: no shared root, nothing dropped
    assert _split_levels(paths, 3, d, "t") == [["R", "a", ""]] * 8 + [["S", "x", ""]] * 2 and d == {}


def test_amazon2023_plain_jsonl(tmp_path):
    write_amazon2023(tmp_path, gz=False)
    assert len(read_raw(tmp_path, format="amazon2023").events) == 5


def write_lcrec(d: Path):
    inter = {"0": ["0", "1", "2"], "1": ["2", "0"], "2": ["1"]}
    item = {
        "0": {"title": "Relay kit", "description": "Hard start.", "brand": "Supco  Inc.",
              "categories": "Industrial & Scientific,Industrial Electrical,Passive Components,Capacitors"},
        "1": {"title": "Staples", "description": "", "brand": "Stanley",
              "categories": "Industrial & Scientific,Tapes, Adhesives & Sealants,Tapes"},
        "2": {"title": "", "description": "Gloves", "brand": "", "categories": ""},
    }
    (d / "Scientific.inter.json").write_text(json.dumps(inter))
    (d / "Scientific.item.json").write_text(json.dumps(item, indent=2))


def test_lcrec_reader(tmp_path):
    write_lcrec(tmp_path)
    assert detect_format(tmp_path) == "lcrec"
    raw = read_raw(tmp_path)
    assert raw.fields == ["brand", "cat1", "cat2", "cat3"]
    assert raw.items.values.tolist() == [
        ["0", "Supco Inc.", "Industrial Electrical", "Passive Components", "Capacitors"],
        ["1", "Stanley", "Tapes, Adhesives & Sealants", "Tapes", ""],
        ["2", "", "", "", ""]]
    assert raw.events.values.tolist() == [["0", "0", 0], ["0", "1", 1], ["0", "2", 2], ["1", "2", 0], ["1", "0", 1], ["2", "1", 0]]
    assert raw.texts.values.tolist() == [["Relay kit", "Hard start."], ["Staples", ""], ["", "Gloves"]]


@pytest.mark.skipif(not (SHARED / "amazon-scientific" / "original").is_dir(), reason="shared data not present")
def test_lcrec_reader_on_real_scientific_matches_bundled_sample():
    """The LC-Rec reader on the real source files gives exactly the bundled items.csv/events.csv
    that make_samples.py derived from them (fields, ids, order)."""
    raw = read_raw(SHARED / "amazon-scientific" / "original")
    ref_items = pd.read_csv(SHARED / "amazon-scientific" / "items.csv", dtype=str, keep_default_na=False)
    ref_events = pd.read_csv(SHARED / "amazon-scientific" / "events.csv", dtype=str, keep_default_na=False)
    got = raw.items.sort_values("item_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    assert got.values.tolist() == ref_items.values.tolist()
    ev = raw.events.astype(str).sort_values(["user_id", "timestamp"], key=lambda s: s.astype(int), kind="stable")
    assert ev.values.tolist() == ref_events.values.tolist()


def write_recbole(d: Path, with_ts=True):
    inter = ["user_id:token\titem_id:token\trating:float" + ("\ttimestamp:float" if with_ts else ""),
             "u1\ti1\t5.0" + ("\t300" if with_ts else ""), "u1\ti2\t4.0" + ("\t100" if with_ts else ""),
             "u2\ti1\t3.0" + ("\t50" if with_ts else "")]
    item = ["item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float",
            "i1\tSteel  staples 1000\tTools Fasteners Staples Extra\tStanley\t9.5",
            "i2\tGloves\tSafety\t\t3.0"]
    (d / "sci.inter").write_text("\n".join(inter) + "\n")
    (d / "sci.item").write_text("\n".join(item) + "\n")


def test_recbole_reader(tmp_path):
    write_recbole(tmp_path)
    assert detect_format(tmp_path) == "recbole"
    raw = read_raw(tmp_path)
    assert raw.name == "sci"
    assert raw.fields == ["categories_1", "categories_2", "categories_3", "brand"]
    assert raw.items.values.tolist() == [["i1", "Tools", "Fasteners", "Staples", "Stanley"], ["i2", "Safety", "", "", ""]]
    assert raw.texts["title"].tolist() == ["Steel staples 1000", "Gloves"]
    assert raw.decisions["ignored_float_columns"] == 1
    assert raw.events.values.tolist() == [["u1", "i1", 300], ["u1", "i2", 100], ["u2", "i1", 50]]
    ds = prepare(raw, required_fields=[], min_count=1)
    assert ds.sequence(0).tolist() == [1, 0]
    two = read_raw(tmp_path, seq_values=2)
    assert two.fields == ["categories_1", "categories_2", "brand"]


def test_recbole_interactions_only(tmp_path):
    write_recbole(tmp_path)
    (tmp_path / "sci.item").unlink()
    raw = read_raw(tmp_path)
    assert raw.fields == [] and raw.items["item_id"].tolist() == ["i1", "i2"] and raw.decisions["no_item_file"] == 1
    ds = prepare(raw, min_count=1)
    assert ds.fields == ["item_id"] and ds.item_features.tolist() == [[1], [2]] and ds.vocab_sizes == [4]
    # u1: i2 (t=100) then i1 (t=300); u2: i1 only, too short to evaluate
    assert ds.split("test", 4).users.tolist() == [0] and ds.split("test", 4).targets.tolist() == [0]
    assert ds.train_samples(4, cover_eval_items=False).shape == (0, 4)
    assert ds.train_samples(4).tolist() == [[-1, -1, 1, 0]]  # eval-only i1 added from u1's test window


def test_recbole_without_timestamp_uses_file_order(tmp_path):
    write_recbole(tmp_path, with_ts=False)
    raw = read_raw(tmp_path)
    assert raw.events["timestamp"].tolist() == [0, 1, 2] and raw.decisions["timestamps_from_file_order"] == 1


def test_tidy_reader_string_ids_text_columns_and_parquet(tmp_path):
    (tmp_path / "items.csv").write_text('item_id,brand,title,cat1\nA-1,"Acme, Inc.",Beaker,Lab\nB-2,,Flask,Lab\n')
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\nbob,B-2,2020-01-02\nbob,A-1,2020-01-01T12:00:00\n")
    raw = read_raw(tmp_path)
    assert raw.format == "tidy" and raw.fields == ["brand", "cat1"]
    assert raw.items.values.tolist() == [["A-1", "Acme, Inc.", "Lab"], ["B-2", "", "Lab"]]
    assert raw.texts["title"].tolist() == ["Beaker", "Flask"]
    assert raw.events["timestamp"].tolist() == [1577923200, 1577880000]
    pq = tmp_path / "pq"
    pq.mkdir()
    pd.DataFrame({"item_id": [1, 2], "cat": ["x", "y"]}).to_parquet(pq / "items.parquet")
    pd.DataFrame({"user_id": [7, 7], "item_id": [2, 1], "timestamp": [5.0, 1.5]}).to_parquet(pq / "events.parquet")
    raw = read_raw(pq)
    assert raw.items.values.tolist() == [["1", "x"], ["2", "y"]]
    assert raw.events["timestamp"].tolist() == [5.0, 1.5]
    ds = prepare(raw, min_count=1)
    assert ds.item_ids[ds.sequence(0)].tolist() == ["1", "2"]


def test_format_override_and_unknown_format(tmp_path):
    write_lcrec(tmp_path)
    with pytest.raises(FileNotFoundError, match="items.csv"):
        read_raw(tmp_path, format="tidy")
    with pytest.raises(ValueError, match="format must be one of"):
        read_raw(tmp_path, format="movielens")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no known dataset format"):
        read_raw(empty)
