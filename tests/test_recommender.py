"""Recommender and the train/evaluate/recommend CLI: batching, bad input, checkpoint/SID checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from generator_reference import reference_beam_search
from test_decode import random_sids, tiny_model

import resid_ext
from resid.generator_train import save_checkpoint
from resid.io import save_sids
from resid.recommender import Recommender, sids_digest

CODES = [4, 3, 5]


@pytest.fixture(scope="module")
def setup():
    sids = random_sids(30, CODES, seed=7)
    model = tiny_model(CODES, seed=7)
    model.cfg.max_history = 4
    return model, sids


def test_matches_reference_and_batching(setup):
    model, sids = setup
    hists = [[1, 2, 3], [], [29, 0, 5, 6, 7, 8], [4]]
    a = Recommender(model, sids, beam=6, batch_size=1).recommend(hists, k=6)
    b = Recommender(model, sids, beam=6, batch_size=3).recommend(hists, k=6)
    assert np.array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    # reference: the same histories encoded by hand (most recent max_history items)
    rows = torch.full((4, 4), -1)
    rows[0, 1:] = torch.tensor([1, 2, 3])
    rows[2] = torch.tensor([5, 6, 7, 8])
    rows[3, 3] = 4
    enc, mask = model.vocab.encoder_input(model.vocab.tokens(torch.as_tensor(sids)), rows)
    ref_items, ref_scores = reference_beam_search(model, enc, mask, sids, 6)
    assert np.array_equal(a.items, ref_items.numpy())
    np.testing.assert_allclose(a.scores, ref_scores.numpy(), atol=1e-5)
    assert a.unknown.tolist() == [0, 0, 0, 0]


def test_unknown_items_skip_or_error(setup):
    model, sids = setup
    ids = [f"it{i}" for i in range(len(sids))]
    rec = Recommender(model, sids, item_ids=ids, beam=5)
    out = rec.recommend([["it1", "nope", "it2"], ["it1", "it2"], ["x", "y"], []], k=3)
    assert out.unknown.tolist() == [1, 0, 2, 0]
    assert np.array_equal(out.items[0], out.items[1])  # the unknown item is dropped, not encoded
    assert out.item_ids is not None and out.item_ids[0].tolist() == [ids[i] for i in out.items[0]]
    assert np.array_equal(out.items[2], out.items[3])  # all unknown == empty history
    strict = Recommender(model, sids, item_ids=ids, beam=5, unknown="error")
    with pytest.raises(ValueError, match=r"history 0 has unknown item 'nope'"):
        strict.recommend([["it1", "nope"]], k=3)
    with pytest.raises(ValueError, match="unknown item 30"):
        Recommender(model, sids, unknown="error").recommend([[30]], k=2)


def test_k_and_beam(setup):
    model, sids = setup
    rec = Recommender(model, sids, beam=4)
    out = rec.recommend([[1]], k=10)  # k > beam widens the beam to k
    assert len(set(out.items[0].tolist())) == 10 and (out.items[0] >= 0).all()
    with pytest.raises(ValueError, match=r"k must be in \[1, 30\] \(the catalog size\), got 31"):
        rec.recommend([[1]], k=31)
    full = rec.recommend([[1]], k=30)  # k == catalog: every item exactly once
    assert sorted(full.items[0].tolist()) == list(range(30))


def test_bad_sid_tables(setup):
    model, sids = setup
    dup = sids.copy()
    dup[3] = dup[5]
    with pytest.raises(ValueError, match="1 duplicate rows"):
        Recommender(model, dup)
    with pytest.raises(ValueError, match="the model decodes 3 levels, sids have 2"):
        Recommender(model, sids[:, :2])
    big = sids.copy()
    big[2, 1] = 3
    with pytest.raises(ValueError, match=r"item row 2 has code 3 at level 2, the model has codes 0..2"):
        Recommender(model, big)
    with pytest.raises(ValueError, match="unknown must be 'skip' or 'error'"):
        Recommender(model, sids, unknown="ignore")


def test_load_rejects_other_sids(setup, tmp_path):
    model, sids = setup
    save_checkpoint(tmp_path / "ckpt", model, {"sids_sha256": sids_digest(sids), "num_items": len(sids)})
    save_sids(tmp_path / "sids.parquet", np.array([f"i{i}" for i in range(30)]), sids)
    rec = Recommender.load(tmp_path / "ckpt", tmp_path / "sids.parquet", beam=5)
    assert isinstance(rec.trie, resid_ext.Trie) and rec.recommend([["i1"]], k=2).items.shape == (1, 2)
    other = random_sids(30, CODES, seed=8)
    save_sids(tmp_path / "other.parquet", np.array([f"i{i}" for i in range(30)]), other)
    with pytest.raises(ValueError, match="checkpoint/SID mismatch"):
        Recommender.load(tmp_path / "ckpt", tmp_path / "other.parquet")


def test_cli_train_evaluate_recommend(tmp_path, capsys):
    from generator_reference import synthetic_dataset

    from resid.cli import main
    from resid.data import save_prepared

    n = 10
    seqs = [[(s + t) % n for t in range(6)] for s in range(n)]
    save_prepared(synthetic_dataset(seqs, n), tmp_path / "ds")
    sids = random_sids(n, [3, 2, 2], seed=0)
    save_sids(tmp_path / "sids.parquet", np.array([f"i{i}" for i in range(n)]), sids)
    args = [str(tmp_path / "ds"), str(tmp_path / "sids.parquet")]
    small = ["--epochs", "2", "--batch-size", "8", "--beam", "4", "--max-history", "3", "--quiet"]
    assert main(["train", *args, str(tmp_path / "gen"), *small]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["best_epoch"] in (1, 2)
    assert main(["evaluate", *args, str(tmp_path / "gen"), "--quiet"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert set(ev["test"]) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10", "users"} and ev["test"]["users"] == n
    assert ev["valid"] == trained["valid"]
    (tmp_path / "h.txt").write_text("i1 i2 zz\n\ni3,i4\n")
    assert main(["recommend", str(tmp_path / "gen"), str(tmp_path / "sids.parquet"), str(tmp_path / "h.txt"), "-k", "3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["unknown"] for x in lines] == [1, 0, 0] and all(len(x["items"]) == 3 for x in lines)
    assert main(["recommend", str(tmp_path / "gen"), str(tmp_path / "sids.parquet"), str(tmp_path / "h.txt"),
                 "--unknown", "error"]) == 1
    assert "unknown item 'zz'" in capsys.readouterr().err
