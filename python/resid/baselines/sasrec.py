"""SASRec (Kang & McAuley 2018) and SASRec* (item id + structured fields, sum-pooled).

Same network size and training loop as FAMAE (resid.nn + resid.training); causal attention.
Objective: next-item prediction on each training window (history = all columns but the last,
target = the last column), full softmax cross-entropy over all N items. An item's
representation, used both as input and as output embedding, is its item-id embedding
(SASRec) or the sum of its J field embeddings (SASRec*). Scores are sqrt(d) * cos(h, e_item)
by default (``similarity="cos"``, as FAMAE), or the plain dot product (``"dot"``).
Evaluation: full ranking over all items, Recall/NDCG@5,10 under leave-one-out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resid.data.dataset import ITEM_FIELD, PreparedDataset
from resid.nn import Encoder, FieldEmbedding, scaled_cosine
from resid.seqeval import check_dataset, dataset_fingerprint, eval_windows, lookup_tokens, ranking_metrics, select_fields, trim_padding
from resid.training import TrainConfig, TrainResult, check_fingerprint, config_dict, fit, load_weights, read_checkpoint_meta, resolve_device


@dataclass
class SASRecConfig:
    """``with_fields=False``: SASRec (item id only); True: SASRec* with ``fields`` (None = all)."""

    with_fields: bool = False
    fields: list[str] | None = None
    d: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    dropout: float = 0.1
    max_len: int = 32  # window length; the model sees max_len - 1 history items
    similarity: str = "cos"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 2048
    epochs: int = 500
    warmup_steps: int = 0
    patience: int = 3
    early_stop: str = "recall@10"
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 1024
    progress: bool = True

    MODEL_KEYS = ("with_fields", "fields", "d", "layers", "heads", "ffn", "dropout", "max_len", "similarity")

    @property
    def name(self) -> str:
        return "sasrec*" if self.with_fields else "sasrec"

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps, patience=self.patience, metric=f"valid/{self.early_stop}",
            seed=self.seed, device=self.device, progress=self.progress,
        )


class SASRecModel(nn.Module):
    """features: [N, J] tokens of the fields in use (J = 1 for SASRec)."""

    def __init__(self, cfg: SASRecConfig, features: torch.Tensor, vocab_sizes: list[int]) -> None:
        super().__init__()
        if cfg.similarity not in ("cos", "dot"):
            raise ValueError(f"SASRecConfig.similarity must be 'cos' or 'dot', got {cfg.similarity!r}")
        self.cfg = cfg
        self.register_buffer("features", features.clone(), persistent=False)
        self.emb = FieldEmbedding(vocab_sizes, cfg.d)
        self.encoder = Encoder(cfg.d, cfg.layers, cfg.heads, cfg.ffn, cfg.dropout, cfg.max_len - 1, causal=True)

    def item_repr(self) -> torch.Tensor:
        """[N, d]: each item's (sum-pooled) field embedding."""
        return self.emb(self.features)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """history: [B, T] item rows (-1 left padding), most recent last -> [B, d] state after it."""
        history = trim_padding(history)
        h = self.encoder(self.emb(lookup_tokens(self.features, history)), history >= 0)
        return h[:, -1]

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        """[B, N] next-item scores."""
        h, e = self.encode(history), self.item_repr()
        return scaled_cosine(h, e) if self.cfg.similarity == "cos" else h @ e.T

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """batch: [B, T] windows; predict the last column from the others (mean CE)."""
        return F.cross_entropy(self.logits(batch[:, :-1]), batch[:, -1])

    def metrics(self, windows: torch.Tensor, targets: torch.Tensor, batch_size: int) -> dict[str, float]:
        return ranking_metrics(lambda w: self.logits(w[:, :-1]), windows, targets, batch_size, self.features.device)


class SASRec:
    """fit / evaluate / load, as :class:`resid.FAMAE`."""

    def __init__(self, config: SASRecConfig | None = None) -> None:
        self.config = config or SASRecConfig()
        self.model: SASRecModel | None = None
        self.result: TrainResult | None = None

    def _build(self, ds: PreparedDataset) -> SASRecModel:
        cfg = self.config
        check_dataset(ds, cfg.name)
        if cfg.with_fields:
            cols = select_fields(ds, cfg.fields, "SASRecConfig.fields")
        else:
            if cfg.fields not in (None, [ITEM_FIELD]):
                raise ValueError(f"SASRecConfig.fields: plain SASRec uses item ids only; got {cfg.fields} (set with_fields=True for SASRec*)")
            cols = [0]
        features = torch.from_numpy(np.ascontiguousarray(ds.item_features[:, cols], dtype=np.int64))
        torch.manual_seed(cfg.seed)
        return SASRecModel(cfg, features, [int(ds.vocab_sizes[c]) for c in cols])

    def _fingerprint(self, ds: PreparedDataset) -> dict[str, Any]:
        c = config_dict(self.config)
        train = {k: v for k, v in c.items() if k not in SASRecConfig.MODEL_KEYS and k not in ("device", "progress", "eval_batch_size")}
        return {"dataset": dataset_fingerprint(ds), "model": {k: c[k] for k in SASRecConfig.MODEL_KEYS}, "train": train}

    def fit(self, ds: PreparedDataset, out_dir: str | os.PathLike[str], resume: bool = False) -> TrainResult:
        cfg = self.config
        model = self._build(ds)
        samples = torch.from_numpy(ds.train_samples(cfg.max_len))
        if len(samples) == 0:
            raise ValueError(f"{cfg.name}: dataset {ds.name!r} has no training windows (every user needs at least 4 interactions)")
        windows, targets = eval_windows(ds, "valid", cfg.max_len)

        def evaluate(m: nn.Module) -> dict[str, float]:
            return {f"valid/{k}": v for k, v in m.metrics(windows, targets, cfg.eval_batch_size).items()}

        self.model = model
        self.result = fit(model, samples, evaluate, cfg.train_config(), out_dir, {"sasrec": config_dict(cfg)}, self._fingerprint(ds), resume)
        return self.result

    @torch.no_grad()
    def evaluate(self, ds: PreparedDataset, split: str = "test") -> dict[str, float]:
        """Recall/NDCG@5,10 on ``split`` ('valid'|'test')."""
        if self.model is None:
            raise RuntimeError(f"{self.config.name}: no trained model; call fit() or load() first")
        if self.model.features.shape[0] != ds.num_items:
            raise ValueError(f"{self.config.name}: model has {self.model.features.shape[0]} items, dataset {ds.name!r} has {ds.num_items}")
        self.model.eval()
        windows, targets = eval_windows(ds, split, self.config.max_len)
        return self.model.metrics(windows, targets, self.config.eval_batch_size)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str], ds: PreparedDataset, device: str = "cpu") -> "SASRec":
        p = Path(checkpoint)
        if (p / "best").is_dir():
            p = p / "best"
        meta = read_checkpoint_meta(p)
        raw = meta["config"]["sasrec"]
        known = {f.name for f in dc_fields(SASRecConfig)}
        obj = cls(SASRecConfig(**{**{k: v for k, v in raw.items() if k in known}, "device": device}))
        check_fingerprint(dataset_fingerprint(ds), meta.get("fingerprint", {}).get("dataset", {}), f"checkpoint {p}")
        model = obj._build(ds)
        load_weights(model, p)
        obj.model = model.to(resolve_device(device)).eval()
        return obj
