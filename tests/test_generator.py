"""Generator model and training: HF T5 parity, learning, checkpoints, resume, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from generator_reference import DenseTrie, synthetic_dataset, torch_trie_beam_step
from test_decode import random_sids

from resid.generator import BOS, EOS, PAD, Generator, GeneratorConfig, SidVocab, relative_position_bucket
from resid.generator_train import load_checkpoint, train
from resid.recommender import Recommender

TINY = dict(d_model=16, d_ff=32, num_heads=2, d_kv=8, encoder_layers=2, decoder_layers=2)


def test_paper_defaults():
    c = GeneratorConfig()
    assert (c.d_model, c.d_ff, c.num_heads, c.d_kv, c.encoder_layers, c.decoder_layers) == (128, 512, 4, 32, 4, 4)
    assert (c.dropout, c.lr, c.weight_decay, c.max_history, c.beam) == (0.1, 5e-3, 1e-5, 20, 50)


def test_vocab_and_encoder_input():
    v = SidVocab([4, 5, 6])
    assert v.offsets == [3, 7, 12] and v.size == 18
    sid_tok = v.tokens(torch.tensor([[0, 0, 0], [3, 4, 5]]))
    assert sid_tok.tolist() == [[3, 7, 12], [6, 11, 17]]
    tok, mask = v.encoder_input(sid_tok, torch.tensor([[-1, 1], [-1, -1]]))
    assert tok.tolist() == [[PAD, PAD, PAD, 6, 11, 17, EOS], [PAD] * 6 + [EOS]]
    assert mask.tolist() == [[False] * 3 + [True] * 4, [False] * 6 + [True]]


def test_relative_buckets_hand_values():
    rel = torch.tensor([-200, -20, -3, 0, 3, 20, 200])
    # bidirectional (16 buckets a side, exact below 8): -20 -> 8 + floor(8 ln(20/8) / ln(128/8)) = 10
    # unidirectional (32 buckets, exact below 16): -20 -> 16 + floor(16 ln(20/16) / ln(128/16)) = 17
    assert relative_position_bucket(rel, True, 32, 128).tolist() == [15, 10, 3, 0, 19, 26, 31]
    assert relative_position_bucket(rel, False, 32, 128).tolist() == [31, 17, 3, 0, 0, 0, 0]


def test_matches_hugging_face_t5():
    pytest.importorskip("transformers")
    from resid.generator import to_hf

    torch.manual_seed(0)
    m = Generator(GeneratorConfig(codes_per_level=[5, 6, 7], **TINY)).eval()
    hf = to_hf(m)
    enc = torch.randint(3, m.vocab.size, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, :4] = False
    dec = torch.randint(3, m.vocab.size, (3, 3))
    dec[:, 0] = BOS
    with torch.no_grad():
        ours = m(enc, mask, dec)
        theirs = hf(input_ids=enc, attention_mask=mask.long(), decoder_input_ids=dec).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def cyclic_dataset(num_items: int, users: int, length: int, seed: int):
    """User u walks item -> (item + 1) % N from a seeded start: the next item is a function of the last one."""
    starts = np.random.default_rng(seed).permutation(max(users, num_items))[:users] % num_items
    seqs = [[(int(s) + t) % num_items for t in range(length)] for s in starts]
    return synthetic_dataset(seqs, num_items)


def tiny_cfg(**kw) -> GeneratorConfig:
    base = dict(TINY, codes_per_level=[3, 3, 3], dropout=0.0, batch_size=16, epochs=3, patience=100, beam=8,
                lr=5e-3, max_history=5)
    return GeneratorConfig(**{**base, **kw})


def test_loss_decreases_and_overfits_to_recall_at_1(tmp_path):
    n = 12
    sids = random_sids(n, [3, 3, 3], seed=0)
    ds = cyclic_dataset(n, users=12, length=7, seed=0)
    res = train(ds, sids, tmp_path, tiny_cfg(epochs=25, lr=1e-2, batch_size=8), trie=DenseTrie(sids), step=torch_trie_beam_step,
                progress=False)
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < 0.1 * losses[0]
    model, meta = load_checkpoint(tmp_path)
    assert meta["epoch"] == res["best_epoch"] and meta["valid"] == res["best"]
    # the last epoch's weights reproduce every training sample at rank 1
    final = Generator(model.cfg)
    final.load_state_dict(torch.load(tmp_path / "train_state.pt", weights_only=False)["model"])
    rec = Recommender(final, sids, beam=8, trie=DenseTrie(sids), step=torch_trie_beam_step)
    samples = ds.train_samples(max_len=6)
    top1, _ = rec.recommend_rows(samples[:, :-1], k=1)
    assert len(samples) == 48 and (top1[:, 0] == samples[:, -1]).all()  # Recall@1 = 1


def test_resume_and_seed_reproduce(tmp_path):
    n = 10
    sids = random_sids(n, [3, 2, 2], seed=1)
    ds = cyclic_dataset(n, users=6, length=6, seed=1)
    kw = dict(trie=DenseTrie(sids), step=torch_trie_beam_step, progress=False)
    cfg = tiny_cfg(dropout=0.1, epochs=3, codes_per_level=[3, 2, 2])
    a = train(ds, sids, tmp_path / "a", cfg, **kw)
    b = train(ds, sids, tmp_path / "b", cfg, **kw)
    assert a["history"] == b["history"]  # same seed -> same losses and metrics
    # interrupted after epoch 2, then resumed: identical to the straight 3-epoch run
    d = tmp_path / "d"
    _partial_run(ds, sids, d, cfg, stop_after=2, **kw)
    r = train(ds, sids, d, cfg, resume=True, **kw)
    assert r["history"] == a["history"]
    straight = torch.load(tmp_path / "a" / "train_state.pt", weights_only=False)["model"]
    resumed = torch.load(d / "train_state.pt", weights_only=False)["model"]
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k


def _partial_run(ds, sids, out, cfg, stop_after: int, **kw):
    """Run ``train`` but stop it after ``stop_after`` epochs, as an interruption would."""
    import resid.generator_train as gt

    calls = {"n": 0}
    real = gt.evaluate

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        return real(*a, **k)

    gt.evaluate = counting
    try:
        with pytest.raises(KeyboardInterrupt):
            train(ds, sids, out, cfg, **kw)
    finally:
        gt.evaluate = real
    assert json.loads((out / "generator.json").read_text())["epoch"] <= stop_after


def test_train_rejects_bad_sids(tmp_path):
    ds = cyclic_dataset(6, users=3, length=6, seed=0)
    with pytest.raises(ValueError, match=r"one row per dataset item \(6\)"):
        train(ds, np.zeros((5, 3), dtype=np.int64), tmp_path, tiny_cfg())
    dup = np.array([[0, 0], [0, 1], [0, 0], [1, 0], [1, 1], [2, 0]])
    with pytest.raises(ValueError, match="1 duplicate rows"):
        train(ds, dup, tmp_path, tiny_cfg())
