"""FAMAE: masking policy, mask tokens, loss vs hand computation, metrics, export, determinism,
bad input. Tiny models on synthetic data (tests/synth_seq.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resid.baselines import popularity_metrics
from resid.famae import FAMAE, FAMAEConfig, FAMAEModel
from resid.io import load_embeddings
from resid.seqeval import ranking_metrics
from resid.training import TrainingDiverged
from synth_seq import make_dataset

TINY = dict(d=32, heads=2, ffn=64, max_len=8, batch_size=64, progress=False)


def tiny_model(ds, **kw) -> FAMAEModel:
    return FAMAE(FAMAEConfig(**{**TINY, **kw}))._build(ds)


# ---- masking policy ------------------------------------------------------------------------
def policy_chi2(mask: torch.Tensor) -> tuple[float, int]:
    """Chi-square of the observed masked subsets against the policy K ~ U{1..J}, then a
    uniform K-subset: P(subset S) = 1 / (J * C(J, |S|)) for every non-empty S."""
    B, J = mask.shape
    codes = (mask.long() * (2 ** torch.arange(J))).sum(1)
    counts = torch.bincount(codes, minlength=2**J).double()
    chi2, cells = 0.0, 0
    for code in range(2**J):
        size = bin(code).count("1")
        if size == 0:  # the empty subset must never occur
            chi2 += float("inf") if counts[0] > 0 else 0.0
            continue
        expected = B / (J * math.comb(J, size))
        chi2 += float((counts[code] - expected) ** 2 / expected)
        cells += 1
    return chi2, cells - 1


def test_masking_policy_distribution():
    ds = make_dataset(field_sizes=(3, 4, 5))  # J = 4: 15 non-empty subsets
    model = tiny_model(ds)
    torch.manual_seed(0)
    mask = model.sample_mask(60_000, torch.device("cpu"))
    chi2, df = policy_chi2(mask)
    # df = 14: mean 14, sd sqrt(28) ~ 5.3; 60 is > 8 sd (p < 1e-7), a wrong policy lands far above it.
    bound = 60.0
    assert chi2 < bound, chi2
    k = mask.sum(1)
    assert k.min() == 1 and k.max() == 4
    # The bound has power: a per-field Bernoulli(1/2) policy (resampling empties) and a "K then
    # first K fields" policy both fail it on the same sample size.
    g = torch.Generator().manual_seed(1)
    bern = torch.rand(80_000, 4, generator=g) < 0.5
    bern = bern[bern.any(1)][:60_000]
    assert policy_chi2(bern)[0] > bound
    kk = torch.randint(1, 5, (60_000, 1), generator=g)
    first_k = torch.arange(4)[None] < kk
    assert policy_chi2(first_k)[0] > bound


def test_mask_tokens_per_field():
    ds = make_dataset(field_sizes=(3, 5))
    model = tiny_model(ds)
    rows = torch.tensor([[-1, 4, 7, 2], [0, 1, 2, 3]])
    target_mask = torch.tensor([[True, False, True], [False, True, False]])
    tok = model.masked_tokens(rows, target_mask)
    feats = torch.from_numpy(ds.item_features)
    assert tok[0, 0].tolist() == [0, 0, 0]  # padding
    assert torch.equal(tok[:, 1:3], feats[rows[:, 1:3]])  # history untouched
    mask_tok = [ds.vocab_sizes[j] - 1 for j in range(3)]
    assert tok[0, -1].tolist() == [mask_tok[0], int(feats[2, 1]), mask_tok[2]]
    assert tok[1, -1].tolist() == [int(feats[3, 0]), mask_tok[1], int(feats[3, 2])]
    # Each field's mask embedding is its own learnable row: masking field 1 moves only row vocab-1 of table 1.
    model.zero_grad()
    model.emb(tok).sum().backward()
    assert model.emb.tables[1].weight.grad[mask_tok[1]].abs().sum() > 0
    assert model.emb.tables[2].weight.grad[mask_tok[2]].abs().sum() > 0
    assert model.emb.tables[0].weight.grad[0].abs().sum() == 0  # pad row gets nothing


# ---- loss ----------------------------------------------------------------------------------
def ref_field_loss(h, tables, labels, mask, alpha) -> float:
    """Readable reference: per masked field with a label, alpha * CE over values 1..n with
    logits sqrt(d) * cos; summed, divided by the batch size."""
    B, d = h.shape
    total = 0.0
    for b in range(B):
        for j, table in enumerate(tables):
            if not mask[b][j] or labels[b][j] == 0:
                continue
            values = table[1:-1]
            logits = [math.sqrt(d) * float(np.dot(h[b], e) / (np.linalg.norm(h[b]) * np.linalg.norm(e))) for e in values]
            lse = math.log(sum(math.exp(x) for x in logits))
            total += alpha[j] * (lse - logits[labels[b][j] - 1])
    return total / B


def test_loss_matches_hand_computation():
    ds = make_dataset(num_items=3, field_sizes=(2,))  # vocab [5, 4], J = 2
    model = tiny_model(ds, d=4, heads=1, field_weights={"f1": 0.5})
    with torch.no_grad():
        model.emb.tables[1].weight[1:3] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    h = torch.tensor([[1.0, 0, 0, 0], [0.3, -0.2, 0.5, 0.1]])
    # Row 0: only f1 masked, label value 1: logits 2*cos = [2, 0] -> 0.5 * log(1 + e^-2).
    labels = torch.tensor([[2, 1], [3, 2]])
    only_f1 = torch.tensor([[False, True], [False, False]])
    expected = 0.5 * math.log(1 + math.exp(-2.0)) / 2
    assert float(model.field_loss(h, labels, only_f1).detach()) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.0317320, rel=1e-5)
    # General case against the readable reference; a missing value (label 0) adds nothing.
    mask = torch.tensor([[True, True], [True, False]])
    tables = [t.weight.detach().numpy() for t in model.emb.tables]
    for lab in (labels, torch.tensor([[2, 0], [3, 2]])):
        ref = ref_field_loss(h.numpy(), tables, lab.tolist(), mask.tolist(), [1.0, 0.5])
        assert float(model.field_loss(h, lab, mask).detach()) == pytest.approx(ref, rel=1e-5)


def test_model_loss_is_field_loss_of_the_masked_target():
    ds = make_dataset()
    model = tiny_model(ds, dropout=0.0)
    batch = torch.from_numpy(ds.train_samples(8)[:32])
    torch.manual_seed(5)
    loss = model.loss(batch)
    torch.manual_seed(5)
    mask = model.sample_mask(32, torch.device("cpu"))
    labels = torch.from_numpy(ds.item_features)[batch[:, -1]]
    assert float(loss.detach()) == pytest.approx(float(model.field_loss(model.encode(batch, mask), labels, mask).detach()), rel=1e-6)


def ref_sampled(h, table, y, negs, log_q) -> float:
    d, S = len(h), len(negs)
    cos = lambda e: float(np.dot(h, e) / (np.linalg.norm(h) * np.linalg.norm(e)))  # noqa: E731
    pos = math.sqrt(d) * cos(table[y])
    terms = [math.exp(pos)] + [math.exp(math.sqrt(d) * cos(table[v]) - log_q[v] - math.log(S)) for v in negs if v != y]
    return math.log(sum(terms)) - pos


def test_sampled_softmax_hand_computed_and_unbiased():
    ds = make_dataset(num_items=50, field_sizes=(3,))
    model = tiny_model(ds, d=8, heads=1, sampled_softmax_threshold=10, num_negatives=20_000)
    assert model.sampled == [True, False]  # 50 item values > 10, 3 f1 values <= 10
    counts = torch.zeros(52, dtype=torch.long)
    counts[1:51] = torch.arange(50) % 7  # a non-uniform proposal, +1 smoothed
    model.set_proposal(0, counts)
    log_q = model.log_q0.numpy().astype(np.float64)
    assert np.exp(log_q).sum() == pytest.approx(1.0, rel=1e-5)
    torch.manual_seed(0)
    h = torch.randn(3, 8)
    labels = torch.tensor([[5, 1], [17, 2], [40, 3]])
    only_item = torch.tensor([[True, False]] * 3)
    table = model.emb.tables[0].weight.detach()[1:-1].numpy().astype(np.float64)
    negs = torch.tensor([5, 9, 9, 33, 50, 1])  # value tokens; 5 is an accidental hit for row 0
    got = float(model.field_loss(h, labels, only_item, negatives={0: negs}).detach())
    ref = sum(ref_sampled(h[b].numpy().astype(np.float64), table, int(labels[b, 0]) - 1, (negs - 1).tolist(), log_q) for b in range(3)) / 3
    assert got == pytest.approx(ref, rel=1e-5)
    # With many negatives from Q, the log-Q corrected loss estimates the full-softmax loss.
    model.sampled = [False, False]
    full = float(model.field_loss(h, labels, only_item).detach())
    model.sampled = [True, False]
    torch.manual_seed(1)
    est = np.mean([float(model.field_loss(h, labels, only_item).detach()) for _ in range(5)])
    assert est == pytest.approx(full, rel=0.02)


# ---- metrics -------------------------------------------------------------------------------
def test_ranking_metrics_against_hand_ranks():
    scores = torch.tensor([
        [0.9, 0.1, 0.5, 0.3, 0.0],  # target 2 -> rank 1
        [0.2, 0.2, 0.2, 0.9, 0.1],  # target 0 -> ties count against it: rank 3
        [0.0, 0.1, 0.2, 0.3, 0.4],  # target 0 -> rank 4
    ])
    targets = torch.tensor([2, 0, 0])
    m = ranking_metrics(lambda w: scores[w[:, 0]], torch.arange(3)[:, None], targets, 2, torch.device("cpu"), ks=(1, 2, 5))
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == pytest.approx(1 / 3) and m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 3)
    assert m["recall@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)) / 3)


def test_metric1_hides_target_fields_metric2_shows_them():
    ds = make_dataset()
    model = tiny_model(ds, dropout=0.0).eval()
    rows = torch.from_numpy(ds.train_samples(8)[:5])
    J = model.num_fields
    all_masked = torch.ones(5, J, dtype=torch.bool)
    item_only = torch.zeros(5, J, dtype=torch.bool)
    item_only[:, 0] = True
    other = rows.clone()
    other[:, -1] = (rows[:, -1] + 13) % ds.num_items  # a different target item, same history
    with torch.no_grad():
        assert torch.equal(model.item_scores(rows, all_masked), model.item_scores(other, all_masked))
        assert not torch.allclose(model.item_scores(rows, item_only), model.item_scores(other, item_only))


# ---- training, export, determinism -----------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ds = make_dataset()
    out = tmp_path_factory.mktemp("famae")
    m = FAMAE(FAMAEConfig(**TINY, lr=5e-3, epochs=6, patience=3))
    res = m.fit(ds, out)
    return ds, m, res, out


def test_training_beats_popularity(trained):
    ds, m, res, _ = trained
    test = m.evaluate(ds, "test")
    pop = popularity_metrics(ds, "test")
    assert set(test) == {f"m{i}/{k}@{n}" for i in (1, 2) for k in ("recall", "ndcg") for n in (5, 10)}
    # synth data: next item = last + 1 w.p. 0.8, so a sequence model must far exceed popularity
    assert test["m1/recall@10"] > pop["recall@10"] + 0.3, (test, pop)
    assert res.best_score == max(h["valid/m1/recall@10"] for h in res.history)


def test_export_shape_order_and_reload(trained, tmp_path):
    ds, m, _, out = trained
    emb = m.item_embeddings()
    J, d = ds.num_fields, TINY["d"]
    assert emb.shape == (ds.num_items, J * d) and emb.dtype == np.float32
    tables = [t.weight.detach().numpy() for t in m.model.emb.tables]
    for i in (0, 7, ds.num_items - 1):
        want = np.concatenate([tables[j][ds.item_features[i, j]] for j in range(J)])
        np.testing.assert_array_equal(emb[i], want)
    ids, loaded, meta = load_embeddings(m.export(ds, tmp_path / "emb"))
    assert list(ids) == list(ds.item_ids) and meta["fields"] == ds.fields
    np.testing.assert_array_equal(loaded, emb)
    again = FAMAE.load(out, ds)
    np.testing.assert_array_equal(again.item_embeddings(), emb)
    assert again.evaluate(ds, "valid") == m.evaluate(ds, "valid")


def test_determinism_under_seed(tmp_path):
    ds = make_dataset(num_users=40)
    cfg = dict(**TINY, epochs=2)
    a = FAMAE(FAMAEConfig(**cfg))
    ha = a.fit(ds, tmp_path / "a").history
    hb = FAMAE(FAMAEConfig(**cfg)).fit(ds, tmp_path / "b").history
    hc = FAMAE(FAMAEConfig(**cfg, seed=1)).fit(ds, tmp_path / "c").history
    assert ha == hb and ha != hc


# ---- bad input -------------------------------------------------------------------------------
def test_bad_inputs(tmp_path, trained):
    ds = make_dataset(num_users=20)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['brand'\]; dataset 'synth' has fields"):
        FAMAE(FAMAEConfig(**TINY, fields=["item_id", "brand"])).fit(ds, tmp_path / "a")
    with pytest.raises(ValueError, match="must start with 'item_id'"):
        FAMAE(FAMAEConfig(**TINY, fields=["f1"])).fit(ds, tmp_path / "a")
    with pytest.raises(ValueError, match=r"field_weights: unknown field\(s\) \['f9'\]"):
        FAMAE(FAMAEConfig(**TINY, field_weights={"f9": 2.0})).fit(ds, tmp_path / "a")
    with pytest.raises(ValueError, match="is empty"):
        FAMAE(FAMAEConfig(**TINY)).fit(make_dataset(num_users=0), tmp_path / "b")
    with pytest.raises(ValueError, match="no training windows"):
        FAMAE(FAMAEConfig(**TINY)).fit(make_dataset(num_users=5, seq_len=(1, 1)), tmp_path / "c")
    with pytest.raises(RuntimeError, match="no trained model"):
        FAMAE().item_embeddings()
    _, _, _, out = trained
    other = make_dataset(seed=3)  # same sizes and fields, different contents
    with pytest.raises(ValueError, match=r"checkpoint .* another dataset or model config \(sha1"):
        FAMAE.load(out, other)
    # resuming with another model config is refused, naming the key
    FAMAE(FAMAEConfig(**TINY, epochs=1)).fit(ds, tmp_path / "d")
    with pytest.raises(ValueError, match=r"model\.d: checkpoint has 32, this run has 16"):
        FAMAE(FAMAEConfig(**{**TINY, "d": 16}, epochs=1)).fit(ds, tmp_path / "d", resume=True)


def test_nan_loss_stops_with_message(tmp_path, monkeypatch):
    ds = make_dataset(num_users=40)
    calls = {"n": 0}
    real = FAMAEModel.loss
    steps = math.ceil(len(ds.train_samples(TINY["max_len"])) / TINY["batch_size"])

    def flaky(self, batch):
        calls["n"] += 1
        out = real(self, batch)
        return out * float("nan") if calls["n"] > steps else out  # NaN from the first step of epoch 2

    monkeypatch.setattr(FAMAEModel, "loss", flaky)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2.*last \\(epoch 1\\)"):
        FAMAE(FAMAEConfig(**TINY, epochs=3)).fit(ds, tmp_path)
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_padding_trim_changes_nothing():
    ds = make_dataset()
    model = tiny_model(ds, dropout=0.0).eval()
    rows = torch.from_numpy(ds.train_samples(8)[:6])
    rows[:, :3] = -1  # leading all-padding columns, trimmed inside encode()
    mask = torch.zeros(6, ds.num_fields, dtype=torch.bool)
    mask[:, 0] = True
    with torch.no_grad():
        full = model.encoder(model.emb(model.masked_tokens(rows, mask)), rows >= 0)[:, -1]
        torch.testing.assert_close(model.encode(rows, mask), full)
