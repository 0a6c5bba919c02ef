"""SASRec / SASRec* / popularity: causality, input pooling, loss, metrics, training, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resid.baselines import SASRec, SASRecConfig, popularity_metrics
from resid.data.dataset import PreparedDataset
from resid.nn import Encoder
from synth_seq import make_dataset

TINY = dict(d=32, heads=2, ffn=64, max_len=8, batch_size=64, progress=False, dropout=0.0)


def build(ds, **kw):
    return SASRec(SASRecConfig(**{**TINY, **kw}))._build(ds).eval()


def test_causal_encoder_ignores_the_future_and_padding():
    torch.manual_seed(0)
    enc = Encoder(8, 2, 2, 16, 0.0, 6, causal=True).eval()
    x = torch.randn(2, 6, 8)
    valid = torch.tensor([[False, False, True, True, True, True]] * 2)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 8)  # change positions 4, 5
    y[:, :2] = torch.randn(2, 2, 8)  # and the padding
    a, b = enc(x, valid), enc(y, valid)
    torch.testing.assert_close(a[:, 2:4], b[:, 2:4])
    assert not torch.allclose(a[:, 5], b[:, 5])
    # all-padding rows stay finite (every position may attend to itself)
    assert torch.isfinite(enc(x, torch.zeros(2, 6, dtype=torch.bool))).all()


def test_sasrec_uses_item_ids_only_and_sasrec_star_pools_fields():
    ds = make_dataset()
    plain, star = build(ds), build(ds, with_fields=True)
    assert len(plain.emb.tables) == 1 and len(star.emb.tables) == ds.num_fields
    f = torch.from_numpy(ds.item_features)
    torch.testing.assert_close(star.item_repr(), sum(star.emb.tables[j].weight[f[:, j]] for j in range(ds.num_fields)))
    hist = torch.from_numpy(ds.train_samples(8)[:4, :-1])
    # changing a structured field of every item changes SASRec* scores, not SASRec's
    changed = make_dataset()
    changed.item_features[:, 1] = changed.item_features[:, 1] % 4 + 1
    plain2 = build(changed)
    plain2.load_state_dict(plain.state_dict())
    star2 = build(changed, with_fields=True)
    star2.load_state_dict(star.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.logits(hist), plain2.logits(hist))
        assert not torch.allclose(star.logits(hist), star2.logits(hist))


def test_loss_is_next_item_cross_entropy():
    ds = make_dataset()
    for sim in ("cos", "dot"):
        model = build(ds, similarity=sim)
        batch = torch.from_numpy(ds.train_samples(8)[:10])
        with torch.no_grad():
            h, e = model.encode(batch[:, :-1]), model.item_repr()
            logits = math.sqrt(32) * F.normalize(h, dim=1) @ F.normalize(e, dim=1).T if sim == "cos" else h @ e.T
            lse = torch.logsumexp(logits, 1)
            ref = (lse - logits[torch.arange(10), batch[:, -1]]).mean()
            torch.testing.assert_close(model.loss(batch), ref)


def test_popularity_against_hand_ranks():
    # 3 users over 4 items; training parts (all but last two): [0, 1], [0, 2], [0, 1, 2]
    seqs = [[0, 1, 3, 2], [0, 2, 1, 3], [0, 1, 2, 3, 1]]
    ds = PreparedDataset(
        name="tiny", fields=["item_id"], item_ids=np.array(["a", "b", "c", "d"]),
        item_features=np.arange(1, 5)[:, None], vocab_sizes=[6], field_values=[np.array(list("abcd"))],
        user_ids=np.array(["u", "v", "w"]), seq_offsets=np.array([0, 4, 8, 13]),
        seq_items=np.array(sum(seqs, [])),
    )
    assert ds.item_popularity().tolist() == [3, 2, 2, 0]
    # test targets 2, 3, 1: item 2 ties with 1 (counts against it) -> rank 2; 3 -> rank 3; 1 -> rank 2
    m = popularity_metrics(ds, "test", ks=(1, 3))
    assert m["recall@1"] == 0.0 and m["recall@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx(2 * (1 / math.log2(4)) / 3)


@pytest.mark.parametrize("star", [False, True])
def test_training_beats_popularity_and_reloads(tmp_path, star):
    ds = make_dataset()
    m = SASRec(SASRecConfig(**{**TINY, "dropout": 0.1}, with_fields=star, lr=5e-3, epochs=6, patience=3))
    res = m.fit(ds, tmp_path)
    test = m.evaluate(ds, "test")
    assert set(test) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert test["recall@10"] > popularity_metrics(ds, "test")["recall@10"] + 0.3, test
    assert res.best_score == max(h["valid/recall@10"] for h in res.history)
    again = SASRec.load(tmp_path, ds)
    assert again.config.with_fields == star
    assert again.evaluate(ds, "test") == test


def test_bad_inputs(tmp_path):
    ds = make_dataset(num_users=20)
    with pytest.raises(ValueError, match="plain SASRec uses item ids only"):
        SASRec(SASRecConfig(**TINY, fields=["item_id", "f1"])).fit(ds, tmp_path)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['color'\]"):
        SASRec(SASRecConfig(**TINY, with_fields=True, fields=["item_id", "color"])).fit(ds, tmp_path)
    with pytest.raises(ValueError, match="similarity must be 'cos' or 'dot'"):
        SASRec(SASRecConfig(**TINY, similarity="l2")).fit(ds, tmp_path)
    with pytest.raises(ValueError, match="is empty"):
        popularity_metrics(make_dataset(num_users=0))
