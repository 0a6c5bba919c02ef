"""The KV-cached, per-user-cross-attention beam search equals plain references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from generator_reference import DenseTrie, exhaustive_scores, reference_beam_search, torch_trie_beam_step

from resid.decode import beam_search
from resid.generator import BOS, Generator, GeneratorConfig

try:
    import resid_ext

    HAVE_EXT = hasattr(resid_ext, "trie_beam_step") and hasattr(resid_ext, "Trie")
except ImportError:  # pragma: no cover
    HAVE_EXT = False

STEPS = ["torch-ref", pytest.param("resid_ext", marks=pytest.mark.skipif(not HAVE_EXT, reason="resid_ext.trie_beam_step not built"))]


def make_trie(kind: str, sids: np.ndarray):
    if kind == "torch-ref":
        return DenseTrie(sids), torch_trie_beam_step
    return resid_ext.Trie(torch.as_tensor(sids, dtype=torch.int64)), resid_ext.trie_beam_step


def random_sids(n: int, codes: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        seen.add(tuple(int(rng.integers(c)) for c in codes))
    return np.array(sorted(seen, key=lambda _: rng.random()), dtype=np.int64)


def tiny_model(codes: list[int], seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(codes_per_level=codes, d_model=16, d_ff=32, num_heads=2, d_kv=8,
                          encoder_layers=2, decoder_layers=2)
    return Generator(cfg).eval()


def random_inputs(model: Generator, sids: np.ndarray, B: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, len(sids), (B, T), generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    hist[torch.arange(T)[None, :] < (T - lengths)[:, None]] = -1  # left padding, incl. empty histories
    return model.vocab.encoder_input(model.vocab.tokens(torch.as_tensor(sids)), hist)


CASES = [  # (items, codes per level, beam)
    (40, [4, 5, 6], 5),
    (40, [4, 5, 6], 8),
    (60, [8, 3, 4], 16),
    (3, [3, 4, 4], 8),  # fewer items than the beam
    (7, [2, 2, 3], 6),
    (25, [6, 6], 4),  # two levels
]


@pytest.mark.parametrize("kind", STEPS)
@pytest.mark.parametrize("n,codes,beam", CASES)
def test_matches_reference_beam_search(kind, n, codes, beam):
    sids = random_sids(n, codes, seed=n + beam)
    model = tiny_model(codes, seed=beam)
    enc, mask = random_inputs(model, sids, B=4, T=3, seed=1)
    trie, step = make_trie(kind, sids)
    got = beam_search(model, enc, mask, trie, beam, step=step)
    ref_items, ref_scores = reference_beam_search(model, enc, mask, sids, beam)
    assert torch.equal(got.items, ref_items)
    fin = torch.isfinite(ref_scores)
    assert torch.equal(torch.isfinite(got.scores), fin)
    torch.testing.assert_close(got.scores[fin], ref_scores[fin], atol=1e-5, rtol=0)
    # invariants: only valid items, no duplicates, sorted
    for row in got.items:
        valid = row[row >= 0]
        assert len(set(valid.tolist())) == len(valid) == min(n, beam)
        assert int(valid.max()) < n
    assert bool((got.scores[:, :-1] >= got.scores[:, 1:]).all())


@pytest.mark.parametrize("kind", STEPS)
def test_beam_one_is_constrained_greedy(kind):
    codes = [5, 4, 6]
    sids = random_sids(50, codes, seed=3)
    model = tiny_model(codes, seed=3)
    enc, mask = random_inputs(model, sids, B=5, T=4, seed=3)
    trie, step = make_trie(kind, sids)
    got = beam_search(model, enc, mask, trie, 1, step=step)
    sid_set = {tuple(s) for s in sids.tolist()}
    for b in range(enc.shape[0]):
        prefix: list[int] = []
        total = 0.0
        for level in range(len(codes)):
            dec = torch.tensor([[BOS] + [model.vocab.offsets[j] + c for j, c in enumerate(prefix)]])
            with torch.no_grad():
                lp = torch.log_softmax(model(enc[b : b + 1], mask[b : b + 1], dec)[0, -1], -1)
            allowed = sorted({s[level] for s in sid_set if list(s[:level]) == prefix})
            best = max(allowed, key=lambda c: (float(lp[model.vocab.offsets[level] + c]), -c))
            total += float(lp[model.vocab.offsets[level] + best])
            prefix.append(best)
        assert sids[int(got.items[b, 0])].tolist() == prefix
        assert abs(float(got.scores[b, 0]) - total) < 1e-5


@pytest.mark.parametrize("kind", STEPS)
def test_wide_beam_equals_exhaustive_scoring(kind):
    codes = [4, 3, 5]
    sids = random_sids(30, codes, seed=5)
    model = tiny_model(codes, seed=5)
    enc, mask = random_inputs(model, sids, B=3, T=3, seed=5)
    trie, step = make_trie(kind, sids)
    got = beam_search(model, enc, mask, trie, 32, k=30, step=step)
    full = exhaustive_scores(model, enc, mask, sids)  # [B, N]
    order = torch.sort(full, dim=1, descending=True, stable=True)
    assert torch.equal(got.items, order.indices)
    torch.testing.assert_close(got.scores, order.values, atol=1e-5, rtol=0)


def test_bad_arguments():
    codes = [3, 3]
    sids = random_sids(5, codes, seed=0)
    model = tiny_model(codes)
    enc, mask = random_inputs(model, sids, B=2, T=2, seed=0)
    trie = DenseTrie(sids)
    with pytest.raises(ValueError, match="beam must be >= 1"):
        beam_search(model, enc, mask, trie, 0, step=torch_trie_beam_step)
    with pytest.raises(ValueError, match=r"k must be in \[1, beam=4\]"):
        beam_search(model, enc, mask, trie, 4, k=5, step=torch_trie_beam_step)


def test_matches_hugging_face_generate():
    """Our top-W equals HF ``generate(num_beams=W, prefix_allowed_tokens_fn=...)`` on the same weights."""
    pytest.importorskip("transformers")
    from resid.generator import EOS, PAD, to_hf

    codes, beam = [8, 4, 5], 6  # >= beam codes at level 1, so HF's first step has W live beams
    sids = random_sids(60, codes, seed=11)
    sids[:8, 0] = np.arange(8)  # every level-1 code is used
    sids = np.unique(sids, axis=0)
    model = tiny_model(codes, seed=11)
    hf = to_hf(model)
    enc, mask = random_inputs(model, sids, B=3, T=3, seed=11)
    got = beam_search(model, enc, mask, DenseTrie(sids), beam, step=torch_trie_beam_step)
    tok = model.vocab.tokens(torch.as_tensor(sids)).tolist()
    allowed: dict[tuple[int, ...], set[int]] = {}
    for t in tok:
        for level in range(len(codes)):
            allowed.setdefault(tuple(t[:level]), set()).add(t[level])
    leaf = {tuple(t): i for i, t in enumerate(tok)}
    with torch.no_grad():
        out = hf.generate(input_ids=enc, attention_mask=mask.long(), num_beams=beam, num_return_sequences=beam,
                          max_new_tokens=len(codes), length_penalty=0.0, do_sample=False, decoder_start_token_id=BOS,
                          pad_token_id=PAD, eos_token_id=EOS, output_scores=True, return_dict_in_generate=True,
                          prefix_allowed_tokens_fn=lambda b, ids: sorted(allowed.get(tuple(ids[1:].tolist()), {EOS})))
    seqs = out.sequences[:, 1:].reshape(3, beam, -1).tolist()
    hf_items = torch.tensor([[leaf[tuple(s)] for s in row] for row in seqs])
    assert torch.equal(got.items, hf_items)
    torch.testing.assert_close(got.scores, out.sequences_scores.reshape(3, beam).float(), atol=1e-5, rtol=0)
