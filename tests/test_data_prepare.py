"""prepare(): item-field filtering, iterative 5-core, chronological order, vocabularies,
leave-one-out, sliding windows, the eval-item rule, stats, atomic writes, memory-mapped loads."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from resid.data import PreparedDataset, RawDataset, kcore, load_prepared, prepare


def raw_from(events, items=None, texts=None):
    """events: list of (user, item, ts); items: {item: {field: value}} (default one field 'f')."""
    ev = pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"]).astype({"user_id": str, "item_id": str})
    if items is None:
        items = {i: {"f": f"v{len(i) % 2}"} for i in dict.fromkeys(str(e[1]) for e in events)}
    it = pd.DataFrame([{"item_id": str(k), **v} for k, v in items.items()]).astype(str)
    return RawDataset(name="toy", format="tidy", items=it, events=ev, texts=texts)


# ---- k-core ------------------------------------------------------------------------------
def test_kcore_iterates_until_stable():
    # k=2. Round 1: item 3 (one event) goes. Round 2: user d is left with one event (item 4)
    # and goes. Round 3: item 4 is left with one event (user a) and goes. a, b, c and items
    # 1, 2 stay.
    ev = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2), ("d", 3), ("a", 4), ("d", 4)]
    u = np.array([ord(x[0]) - 97 for x in ev])
    i = np.array([x[1] for x in ev])
    keep, rounds = kcore(u, i, 2)
    assert keep.tolist() == [True] * 6 + [False, False, False]
    assert rounds == 3


def test_kcore_matches_naive_reference():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 60, 800)
    i = rng.zipf(1.6, 800) % 90
    keep, _ = kcore(u, i, 5)
    ev = list(zip(u.tolist(), i.tolist(), range(800)))
    while True:  # the make_samples.py reference
        uc, ic = pd.Series([e[0] for e in ev]).value_counts(), pd.Series([e[1] for e in ev]).value_counts()
        kept = [e for e in ev if uc[e[0]] >= 5 and ic[e[1]] >= 5]
        if len(kept) == len(ev):
            break
        ev = kept
    assert sorted(e[2] for e in ev) == np.nonzero(keep)[0].tolist()


# ---- hand-made preparation ---------------------------------------------------------------
def test_prepare_hand_made_sequences_vocab_and_splits():
    # 3 users x 3 items, min_count=2. Item "9" has one event -> dropped, then user z (2 events,
    # one on 9) has 1 left -> dropped. Ties at t=5 keep file order.
    events = [("x", "a", 1), ("x", "b", 5), ("x", "c", 5), ("y", "c", 3), ("y", "a", 2), ("y", "b", 9),
              ("z", "a", 0), ("z", "9", 1)]
    items = {"c": {"f": "hi"}, "a": {"f": "lo"}, "b": {"f": "hi"}, "9": {"f": "lo"}, "q": {"f": "zz"}}
    ds = prepare(raw_from(events, items), min_count=2)
    assert ds.item_ids.tolist() == ["c", "a", "b"]  # item-table order, "9" and "q" gone
    assert ds.user_ids.tolist() == ["x", "y"]
    assert ds.sequence(0).tolist() == [1, 2, 0]  # a(1) b(5) c(5): tie keeps file order b, c
    assert ds.sequence(1).tolist() == [1, 0, 2]  # a(2) c(3) b(9)
    assert ds.fields == ["item_id", "f"]
    assert ds.vocab_sizes == [5, 4]  # 3 items + pad + mask; {hi, lo} + pad + mask
    assert ds.field_values[1].tolist() == ["hi", "lo"]
    assert ds.item_features.tolist() == [[1, 1], [2, 2], [3, 1]]
    assert ds.mask_token(1) == 3
    test = ds.split("test", max_len=4)
    assert test.targets.tolist() == [0, 2]
    assert test.histories.tolist() == [[-1, -1, 1, 2], [-1, -1, 1, 0]]
    valid = ds.split("valid", max_len=4)
    assert valid.targets.tolist() == [2, 0]
    assert valid.histories.tolist() == [[-1, -1, -1, 1], [-1, -1, -1, 1]]
    st = ds.stats
    assert (st["users"], st["items"], st["interactions"]) == (2, 3, 6)
    assert st["density"] == pytest.approx(1.0) and st["avg_seq_len"] == 3.0
    assert st["vocab_sizes"] == {"item_id": 5, "f": 4}
    d = st["decisions"]
    assert d["items_without_events"] == 1 and d["kcore_dropped_events"] == 2
    assert d["kcore_dropped_users"] == 1 and d["kcore_dropped_items"] == 1 and d["kcore_rounds"] == 2


def test_leave_one_out_and_windows_hand_made():
    # one user, items 0..6 in order: train part = 0..4, valid target 5, test target 6
    ds = _ds([[0, 1, 2, 3, 4, 5, 6]], n_items=7)
    s = ds.train_samples(max_len=3, cover_eval_items=False)
    assert s.tolist() == [[-1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert ds.split("valid", max_len=3).histories.tolist() == [[2, 3, 4]]
    assert ds.split("test", max_len=8).histories.tolist() == [[-1, -1, 0, 1, 2, 3, 4, 5]]
    assert ds.split("test").targets.tolist() == [6]


def test_eval_only_items_are_added_to_training():
    # item 5 is only ever a validation target (user 0); item 6 only a test target (users 0 and 1);
    # item 7 is user 1's validation target but also in user 2's training part -> not added.
    ds = _ds([[0, 1, 2, 5, 6], [3, 4, 0, 7, 6], [7, 1, 2, 3, 4]], n_items=8)
    assert ds.eval_only_items().tolist() == [5, 6]
    base = ds.train_samples(max_len=4, cover_eval_items=False)
    full = ds.train_samples(max_len=4)
    assert len(full) == len(base) + 2
    assert full[: len(base)].tolist() == base.tolist()
    # item 5: user 0's validation window; item 6: the test window of the first user (0)
    assert full[len(base):].tolist() == [[0, 1, 2, 5], [1, 2, 5, 6]]
    assert not np.isin([5, 6], base).any()


def test_vectorised_splits_match_loop_reference():
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 40, rng.integers(1, 50)).tolist() for _ in range(200)]
    ds = _ds(seqs, n_items=40)
    for L in (2, 5, 32):
        assert ds.train_samples(L, cover_eval_items=False).tolist() == _ref_train(seqs, L)
        for which, drop in (("valid", 2), ("test", 1)):
            sp = ds.split(which, L)
            ref = [(u, s[max(0, len(s) - drop - L): len(s) - drop], s[-drop]) for u, s in enumerate(seqs) if len(s) >= drop + 1]
            assert sp.users.tolist() == [r[0] for r in ref]
            assert sp.targets.tolist() == [r[2] for r in ref]
            assert sp.histories.tolist() == [[-1] * (L - len(r[1])) + r[1] for r in ref]
    pop = np.zeros(40, int)
    for s in seqs:
        for i in s[:-2]:
            pop[i] += 1
    assert ds.item_popularity().tolist() == pop.tolist()


def _ref_train(seqs, L):
    rows = []
    for s in seqs:
        s = s[:-2]
        for t in range(1, len(s)):
            w = s[max(0, t + 1 - L): t + 1]
            rows.append([-1] * (L - len(w)) + w)
    return rows


def _ds(seqs, n_items):
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    return PreparedDataset(
        name="t", fields=["item_id"], item_ids=np.arange(n_items).astype(str), item_features=np.arange(1, n_items + 1)[:, None],
        vocab_sizes=[n_items + 2], field_values=[np.arange(n_items).astype(str)], user_ids=np.arange(len(seqs)).astype(str),
        seq_offsets=offsets, seq_items=np.array([i for s in seqs for i in s], dtype=np.int64),
    )


# ---- item-field filtering, text, settings ------------------------------------------------
def _grid_events(n_users=6, n_items=6):
    """Every user sees every item once: any item/user survives a 5-core when n >= 5."""
    return [(f"u{u}", f"i{i}", i * 10 + u) for u in range(n_users) for i in range(n_items)]


def test_required_fields_drop_items_and_count():
    items = {f"i{i}": {"brand": "" if i == 0 else "b", "cat": "" if i == 1 else f"c{i % 2}"} for i in range(6)}
    raw = raw_from(_grid_events(6, 7), items)  # i6 has events but no item row -> unknown
    ds = prepare(raw, min_count=1)
    d = ds.stats["decisions"]
    assert d["items_dropped_missing_fields"] == 2 and d["events_on_dropped_items"] == 12
    assert d["events_on_unknown_items"] == 6
    assert ds.item_ids.tolist() == ["i2", "i3", "i4", "i5"]
    # optional fields: the empty value is kept as its own vocabulary entry ""
    ds2 = prepare(raw, required_fields=["brand"], min_count=1)
    assert ds2.item_ids.tolist() == ["i1", "i2", "i3", "i4", "i5"]
    assert ds2.field_values[2].tolist() == ["", "c0", "c1"]
    assert ds2.stats["missing_values"] == {"brand": 0, "cat": 1}
    ds3 = prepare(raw, fields=["cat"], required_fields=[], min_count=1)
    assert ds3.fields == ["item_id", "cat"] and ds3.num_items == 6


def test_item_texts_and_roundtrip(tmp_path):
    items = {f"i{i}": {"f": "x"} for i in range(6)}
    texts = pd.DataFrame({"title": [f"t{i}" if i != 2 else "" for i in range(6)], "description": ["d0", "", "", "", "", ""]})
    ds = prepare(raw_from(_grid_events(), items, texts), tmp_path / "p")
    assert ds.item_texts.tolist() == ["t0\nd0", "t1", "", "t3", "t4", "t5"]
    assert ds.stats["has_text"] and ds.stats["items_without_text"] == 1
    back = load_prepared(tmp_path / "p")
    assert back.item_texts.tolist() == ds.item_texts.tolist()
    assert prepare(raw_from(_grid_events(), items), tmp_path / "q").item_texts is None
    assert load_prepared(tmp_path / "q").item_texts is None


def test_load_is_memory_mapped_and_equal(tmp_path):
    ds = prepare(raw_from(_grid_events()), tmp_path / "p")
    back = load_prepared(tmp_path / "p")
    assert isinstance(back.seq_items, np.memmap) and isinstance(back.item_features, np.memmap)
    assert np.array_equal(back.seq_items, ds.seq_items) and np.array_equal(back.item_features, ds.item_features)
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["interactions"] == 36
    assert back.train_samples().tolist() == ds.train_samples().tolist()


def test_prepare_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare(raw_from(_grid_events()), tmp_path / "out")
    assert os.listdir(tmp_path) == []  # no output folder, no temporary left behind
    monkeypatch.setattr(np, "save", real_save)
    prepare(raw_from(_grid_events()), tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_deterministic(tmp_path):
    a = prepare(raw_from(_grid_events(7, 8)), tmp_path / "a")
    b = prepare(raw_from(_grid_events(7, 8)), tmp_path / "b")
    for f in ("item_ids.npy", "seq_items.npy", "seq_offsets.npy", "item_features.npy", "user_ids.npy", "stats.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a.stats == b.stats
