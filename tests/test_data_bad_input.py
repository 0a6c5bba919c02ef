"""Every bad-input case of issue 4: a clear error naming the file/column/line, or a logged,
counted decision in stats.json."""
import gzip
import json
import logging

import pytest

from resid.data import prepare, read_raw

ITEMS = "item_id,brand\n" + "".join(f"i{i},b{i % 2}\n" for i in range(6))
EVENTS = "user_id,item_id,timestamp\n" + "".join(f"u{u},i{i},{i}\n" for u in range(6) for i in range(6))


def tidy(d, items=ITEMS, events=EVENTS):
    if items is not None:
        (d / "items.csv").write_text(items)
    if events is not None:
        (d / "events.csv").write_text(events)
    return d


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prepare(tmp_path / "nope", tmp_path / "out")
    tidy(tmp_path, events=None)
    with pytest.raises(FileNotFoundError, match="missing events.csv"):
        read_raw(tmp_path, format="tidy")


@pytest.mark.parametrize("which,header,col", [("items", "id,brand", "item_id"), ("events", "user_id,item_id,time", "timestamp")])
def test_missing_column(tmp_path, which, header, col):
    content = {"items": ITEMS, "events": EVENTS}
    content[which] = header + "\n" + content[which].split("\n", 1)[1]
    tidy(tmp_path, **content)
    with pytest.raises(ValueError, match=rf"{which}.csv: missing column\(s\) \['{col}'\]"):
        read_raw(tmp_path)


def test_wrong_types(tmp_path):
    tidy(tmp_path, events=EVENTS.replace("u0,i0,0", "u0,i0,yesterday"))
    with pytest.raises(ValueError, match=r"events.csv: column 'timestamp' must be numeric.*'yesterday'"):
        read_raw(tmp_path)
    d = tmp_path / "az"
    d.mkdir()
    (d / "meta_X.jsonl").write_text(json.dumps({"parent_asin": "A", "store": "s", "categories": "Lab"}) + "\n")
    (d / "X.jsonl").write_text(json.dumps({"user_id": "u", "parent_asin": "A", "timestamp": 1}) + "\n")
    with pytest.raises(ValueError, match=r"meta_X.jsonl:1: 'categories' must be a list"):
        read_raw(d)
    (d / "meta_X.jsonl").write_text(json.dumps({"parent_asin": "A", "store": "s", "categories": []}) + "\n")
    (d / "X.jsonl").write_text(json.dumps({"user_id": "u", "parent_asin": "A", "timestamp": "May 1"}) + "\n")
    with pytest.raises(ValueError, match=r"X.jsonl:1: 'timestamp' must be a number"):
        read_raw(d)
    lc = tmp_path / "lc"
    lc.mkdir()
    (lc / "S.inter.json").write_text(json.dumps({"0": "1"}))
    (lc / "S.item.json").write_text(json.dumps({"1": {"brand": "b"}}))
    with pytest.raises(ValueError, match=r"S.inter.json: user '0' must map to a list"):
        read_raw(lc)


def test_empty_tables(tmp_path):
    tidy(tmp_path, items="item_id,brand\n")
    with pytest.raises(ValueError, match="items.csv: the item table is empty"):
        read_raw(tmp_path)
    tidy(tmp_path, items=ITEMS, events="user_id,item_id,timestamp\n")
    with pytest.raises(ValueError, match="events.csv: the event table is empty"):
        read_raw(tmp_path)
    tidy(tmp_path, events="")
    with pytest.raises(ValueError, match="events.csv: the file is empty"):
        read_raw(tmp_path)


def test_duplicate_item_rows(tmp_path, caplog):
    tidy(tmp_path, items=ITEMS + "i1,b1\n")  # identical duplicate: dropped and counted
    with caplog.at_level(logging.INFO, logger="resid.data"):
        ds = prepare(tmp_path, tmp_path / "out")
    assert ds.stats["decisions"]["duplicate_item_rows_identical"] == 1 and ds.num_items == 6
    assert "dropped 1 identical duplicate item rows" in caplog.text
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["decisions"]["duplicate_item_rows_identical"] == 1
    tidy(tmp_path, items=ITEMS + "i1,OTHER\n")  # conflicting: an error naming the item ...
    with pytest.raises(ValueError, match=r"conflicting fields, e.g. item_id 'i1'.*duplicates='first'"):
        read_raw(tmp_path)
    ds = prepare(tmp_path, duplicates="first")  # ... or keep the first row, counted
    assert ds.stats["decisions"]["duplicate_item_rows_conflicting"] == 1
    assert ds.field_values[1][ds.item_features[1, 1] - 1] == "b1"


def test_events_on_unknown_items_are_dropped_and_counted(tmp_path, caplog):
    tidy(tmp_path, events=EVENTS + "u0,ghost,9\nu1,ghost,9\n")
    with caplog.at_level(logging.INFO, logger="resid.data"):
        ds = prepare(tmp_path)
    assert ds.stats["decisions"]["events_on_unknown_items"] == 2 and ds.stats["interactions"] == 36
    assert "dropped 2 events on items absent from the item table" in caplog.text


def test_missing_timestamps_are_dropped_and_counted(tmp_path, caplog):
    tidy(tmp_path, events=EVENTS + "u0,i1,\nu2,i3,\n")
    with caplog.at_level(logging.INFO, logger="resid.data"):
        ds = prepare(tmp_path)
    assert ds.stats["decisions"]["events_missing_timestamp"] == 2 and ds.stats["interactions"] == 36
    assert "dropped 2 events with no timestamp" in caplog.text
    tidy(tmp_path, events="user_id,item_id,timestamp\nu0,i1,\n")
    with pytest.raises(ValueError, match="no event has a user_id, an item_id and a timestamp"):
        read_raw(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_malformed_json_line_reports_line_number(tmp_path, gz):
    lines = [json.dumps({"parent_asin": "A", "store": "s", "categories": ["c"]}), "", '{"parent_asin": "B", "store": ', ""]
    text = "\n".join(lines)
    if gz:
        with gzip.open(tmp_path / "meta_X.jsonl.gz", "wt") as f:
            f.write(text)
    else:
        (tmp_path / "meta_X.jsonl").write_text(text)
    (tmp_path / "X.jsonl").write_text(json.dumps({"user_id": "u", "parent_asin": "A", "timestamp": 1}) + "\n")
    with pytest.raises(ValueError, match=r"meta_X.jsonl(.gz)?:3: malformed JSON line"):
        read_raw(tmp_path)
    raw = read_raw(tmp_path, on_bad_line="skip")
    assert raw.decisions["malformed_json_lines"] == 1 and raw.items["item_id"].tolist() == ["A"]


def test_malformed_json_document_reports_line(tmp_path):
    (tmp_path / "S.inter.json").write_text('{\n "0": ["1", "2"],\n "1": ["2" "1"]\n}')
    (tmp_path / "S.item.json").write_text("{}")
    with pytest.raises(ValueError, match=r"S.inter.json:3: malformed JSON"):
        read_raw(tmp_path)


def test_kcore_leaving_nothing(tmp_path):
    tidy(tmp_path)
    with pytest.raises(ValueError, match=r"the 7-core filter left no events.*lower min_count"):
        prepare(tmp_path, tmp_path / "out", min_count=7)
    assert not (tmp_path / "out").exists()


def test_item_filter_leaving_nothing_and_bad_settings(tmp_path):
    tidy(tmp_path, items="item_id,brand\n" + "".join(f"i{i},\n" for i in range(6)))
    with pytest.raises(ValueError, match="no event .* is left after item filtering"):
        prepare(tmp_path)
    with pytest.raises(ValueError, match=r"fields \['colour'\] are not item fields"):
        prepare(tmp_path, fields=["colour"])
    with pytest.raises(ValueError, match=r"required_fields \['colour'\] are not among the chosen fields"):
        prepare(tmp_path, required_fields=["colour"])
    with pytest.raises(ValueError, match="lists of names"):
        prepare(tmp_path, fields="brand")
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        prepare(tmp_path, min_count=0)


def test_recbole_bad_header(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id\n1\t2\n")
    (tmp_path / "x.item").write_text("item_id:token\n2\n")
    with pytest.raises(ValueError, match=r"x.inter: header 'item_id' is not 'name:type'"):
        read_raw(tmp_path)
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    (tmp_path / "x.item").write_text("item_id:token\tcolour:enum\n2\tred\n")
    with pytest.raises(ValueError, match=r"x.item: column 'colour' has unknown type 'enum'"):
        read_raw(tmp_path)


def test_cli_prints_one_line_errors(tmp_path, capsys):
    from resid.cli import main

    tidy(tmp_path)
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--min-count", "7", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("resid prepare: error: prepare: the 7-core filter left no events") and "Traceback" not in err


def test_output_folder_that_is_not_a_dataset_is_never_replaced(tmp_path):
    tidy(tmp_path)
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="exists and is not a prepared dataset"):
        prepare(tmp_path, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    prepare(tmp_path, tmp_path / "out")
    prepare(tmp_path, tmp_path / "out", min_count=1)  # a prepared dataset is replaced
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["settings"]["min_count"] == 1
