"""FAMAE: Field-Aware Masked Auto-Encoding, the E-stage encoder (paper Sec. 3.1-3.2, App. E).

Input per position: the sum of the item's J field embeddings + a learnable position embedding,
through a bidirectional Transformer. On the target (last) position of each training window,
K ~ U{1..J} fields are chosen uniformly and replaced by their field's mask token; the loss is,
per masked field k, alpha_k * CE over field k's values with logits sqrt(d) * cos(h_T, e_v),
summed over masked fields and averaged over the batch (the paper's L_FAMAE).

Metric 1: item-ID Recall/NDCG@10 with every target field masked (full ranking over all items
by sqrt(d) * cos(h_T, e_item)). Metric 2: the same with only the item-ID field masked.
Export: item i -> concat_j e_j(token_ij), [N, J*d] float32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields as dc_fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resid.data.dataset import PreparedDataset
from resid.io import save_embeddings
from resid.nn import Encoder, FieldEmbedding, scaled_cosine
from resid.seqeval import check_dataset, dataset_fingerprint, eval_windows, lookup_tokens, ranking_metrics, select_fields, trim_padding
from resid.training import TrainConfig, TrainResult, check_fingerprint, config_dict, fit, load_weights, read_checkpoint_meta, resolve_device


@dataclass
class FAMAEConfig:
    """Paper defaults (Appendix E). ``fields``: None = every dataset field (``item_id`` first).
    ``field_weights``: alpha_k by field name (missing = 1). A field whose value count exceeds
    ``sampled_softmax_threshold`` is trained with sampled softmax (``num_negatives`` negatives
    drawn from its +1-smoothed training-target frequency, log-Q corrected)."""

    d: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    dropout: float = 0.1
    max_len: int = 32
    fields: list[str] | None = None
    field_weights: dict[str, float] = field(default_factory=dict)
    sampled_softmax_threshold: int = 50_000
    num_negatives: int = 128
    # training
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 2048
    epochs: int = 500
    warmup_steps: int = 0
    patience: int = 3
    early_stop: str = "m1/recall@10"  # m1|m2 / recall|ndcg @5|10
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 1024
    progress: bool = True

    MODEL_KEYS = ("d", "layers", "heads", "ffn", "dropout", "max_len", "fields", "field_weights", "sampled_softmax_threshold", "num_negatives")

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps, patience=self.patience, metric=f"valid/{self.early_stop}",
            seed=self.seed, device=self.device, progress=self.progress,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FAMAEConfig":
        known = {f.name for f in dc_fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"FAMAEConfig: unknown option(s) {unknown}")
        return cls(**d)


class FAMAEModel(nn.Module):
    """The network. features: [N, J] int64 tokens of the selected fields; vocab_sizes: [J];
    alpha: [J] field weights; target_counts: per field, [V_j] training-target token counts
    (used as the sampled-softmax proposal for large fields)."""

    def __init__(self, cfg: FAMAEConfig, features: torch.Tensor, vocab_sizes: list[int], alpha: list[float]) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_sizes = list(vocab_sizes)
        self.register_buffer("features", features.clone(), persistent=False)
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32), persistent=False)
        self.register_buffer("mask_tokens", torch.tensor([v - 1 for v in vocab_sizes]), persistent=False)
        self.emb = FieldEmbedding(vocab_sizes, cfg.d)
        self.encoder = Encoder(cfg.d, cfg.layers, cfg.heads, cfg.ffn, cfg.dropout, cfg.max_len, causal=False)
        # Sampled-softmax proposal log-probabilities over values 1..n_j, for large fields only.
        self.sampled = [v - 2 > cfg.sampled_softmax_threshold for v in vocab_sizes]
        for j, big in enumerate(self.sampled):
            if big:
                self.register_buffer(f"log_q{j}", torch.full((vocab_sizes[j] - 2,), -float(np.log(vocab_sizes[j] - 2))))

    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    def set_proposal(self, j: int, counts: torch.Tensor) -> None:
        """Proposal for field j's negatives: training-target frequency of values 1..n_j, +1 smoothed."""
        q = counts[1 : self.vocab_sizes[j] - 1].double() + 1.0
        getattr(self, f"log_q{j}").copy_((q / q.sum()).log().float())

    def sample_mask(self, B: int, device: torch.device) -> torch.Tensor:
        """Two-level masking policy: K ~ U{1..J}, then K distinct fields uniformly. [B, J] bool."""
        J = self.num_fields
        k = torch.randint(1, J + 1, (B, 1), device=device)
        rank = torch.rand(B, J, device=device).argsort(dim=1).argsort(dim=1)  # a uniform random permutation
        return rank < k

    def masked_tokens(self, rows: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """rows: [B, T] item rows (-1 pad; last column = target); target_mask: [B, J] bool.
        Returns [B, T, J] tokens where the target's masked fields hold their field's mask token."""
        tok = lookup_tokens(self.features, rows)
        tgt = torch.where(target_mask, self.mask_tokens.expand_as(target_mask), tok[:, -1])
        return torch.cat([tok[:, :-1], tgt[:, None]], dim=1)

    def encode(self, rows: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Contextual state of the (masked) target position, h_T: [B, d]."""
        rows = trim_padding(rows)
        h = self.encoder(self.emb(self.masked_tokens(rows, target_mask)), rows >= 0)
        return h[:, -1]

    def field_loss(self, h: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                   negatives: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """sum_b sum_{k masked in b} alpha_k * CE_k(b) / B. h: [B, d]; labels: [B, J] true tokens
        (0 = missing value, no loss term); mask: [B, J] bool. ``negatives[j]`` ([S] values in
        1..n_j) overrides the random negatives of a sampled field (tests)."""
        total = h.new_zeros(())
        for j in range(self.num_fields):
            sel = mask[:, j] & (labels[:, j] > 0)
            if not sel.any():
                continue
            hj, y = h[sel], labels[sel, j] - 1  # value index 0..n_j-1
            table = self.emb.tables[j].weight[1:-1]  # values only: no pad, no mask token
            if not self.sampled[j]:
                ce = F.cross_entropy(scaled_cosine(hj, table), y, reduction="sum")
            else:
                ce = self._sampled_ce(j, hj, y, table, None if negatives is None else negatives.get(j))
            total = total + self.alpha[j] * ce
        return total / h.shape[0]

    def _sampled_ce(self, j: int, h: torch.Tensor, y: torch.Tensor, table: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
        """Sampled softmax with log-Q correction: S shared negatives v_s ~ Q, each logit minus
        log(S * Q(v_s)); negatives equal to the label are dropped. Then sum_s exp(corrected
        logit) is an unbiased estimate of the partition over the non-target values, so the loss
        estimates the full-softmax CE. The true value's logit is not corrected (it is not sampled)."""
        log_q = getattr(self, f"log_q{j}")
        idx = torch.multinomial(log_q.exp(), self.cfg.num_negatives, replacement=True) if neg is None else neg.to(h.device) - 1
        pos = (F.normalize(h, dim=-1) * F.normalize(table[y], dim=-1)).sum(-1) * h.shape[-1] ** 0.5  # [B]
        negl = scaled_cosine(h, table[idx]) - (log_q[idx] + float(np.log(len(idx))))[None]  # [B, S]
        negl = negl.masked_fill(idx[None] == y[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos[:, None], negl], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(y), reduction="sum")

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """batch: [B, T] item rows (training windows, last column = target). Scalar loss."""
        mask = self.sample_mask(batch.shape[0], batch.device)
        labels = self.features[batch[:, -1]]
        return self.field_loss(self.encode(batch, mask), labels, mask)

    def item_scores(self, rows: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the target: [B, N] = sqrt(d) * cos(h_T, e_item)."""
        N = self.features.shape[0]
        return scaled_cosine(self.encode(rows, target_mask), self.emb.tables[0].weight[1 : N + 1])

    def metrics(self, windows: torch.Tensor, targets: torch.Tensor, batch_size: int,
                which: tuple[str, ...] = ("m1", "m2")) -> dict[str, float]:
        """Metric 1 (``m1/``: all target fields masked) and Metric 2 (``m2/``: item id only)."""
        device = self.features.device
        out: dict[str, float] = {}
        for name, only_item in (("m1", False), ("m2", True)):
            if name not in which:
                continue
            def score(w: torch.Tensor) -> torch.Tensor:
                m = torch.zeros(len(w), self.num_fields, dtype=torch.bool, device=device)
                m[:, 0] = True
                if not only_item:
                    m[:] = True
                return self.item_scores(w, m)

            for k, v in ranking_metrics(score, windows, targets, batch_size, device).items():
                out[f"{name}/{k}"] = v
        return out


class FAMAE:
    """Train, evaluate, export and load a FAMAE encoder on a :class:`PreparedDataset`.

    >>> m = FAMAE(FAMAEConfig(epochs=20)); m.fit(ds, "runs/famae")
    >>> m.evaluate(ds, "test"); m.export(ds, "runs/famae/embeddings")
    """

    def __init__(self, config: FAMAEConfig | None = None) -> None:
        self.config = config or FAMAEConfig()
        self.model: FAMAEModel | None = None
        self.field_names: list[str] = []
        self.result: TrainResult | None = None

    # ---- construction -----------------------------------------------------------------
    def _build(self, ds: PreparedDataset) -> FAMAEModel:
        cfg = self.config
        check_dataset(ds, "FAMAE")
        cols = select_fields(ds, cfg.fields, "FAMAEConfig.fields")
        self.field_names = [ds.fields[c] for c in cols]
        bad = sorted(set(cfg.field_weights) - set(self.field_names))
        if bad:
            raise ValueError(f"FAMAEConfig.field_weights: unknown field(s) {bad}; fields in use are {self.field_names}")
        if any(w < 0 for w in cfg.field_weights.values()):
            raise ValueError(f"FAMAEConfig.field_weights must be >= 0, got {cfg.field_weights}")
        features = torch.from_numpy(np.ascontiguousarray(ds.item_features[:, cols], dtype=np.int64))
        vocab = [int(ds.vocab_sizes[c]) for c in cols]
        alpha = [float(cfg.field_weights.get(f, 1.0)) for f in self.field_names]
        torch.manual_seed(cfg.seed)
        return FAMAEModel(cfg, features, vocab, alpha)

    def _fingerprint(self, ds: PreparedDataset) -> dict[str, Any]:
        c = config_dict(self.config)
        train = {k: v for k, v in c.items() if k not in FAMAEConfig.MODEL_KEYS and k not in ("device", "progress", "eval_batch_size")}
        return {"dataset": dataset_fingerprint(ds), "model": {k: c[k] for k in FAMAEConfig.MODEL_KEYS}, "train": train}

    # ---- public API ---------------------------------------------------------------------
    def fit(self, ds: PreparedDataset, out_dir: str | os.PathLike[str], resume: bool = False) -> TrainResult:
        """Train with early stopping on validation Metric 1; checkpoints under ``out_dir``
        (best/, last/). The model keeps the best epoch's weights."""
        cfg = self.config
        model = self._build(ds)
        samples = torch.from_numpy(ds.train_samples(cfg.max_len))
        if len(samples) == 0:
            raise ValueError(f"FAMAE: dataset {ds.name!r} has no training windows (every user needs at least 4 interactions)")
        for j, big in enumerate(model.sampled):
            if big:
                model.set_proposal(j, torch.bincount(model.features[samples[:, -1], j], minlength=model.vocab_sizes[j]))
        windows, targets = eval_windows(ds, "valid", cfg.max_len)

        def evaluate(m: nn.Module) -> dict[str, float]:
            # Per-epoch validation computes only the metric that drives early stopping.
            which = (cfg.early_stop.split("/")[0],)
            return {f"valid/{k}": v for k, v in m.metrics(windows, targets, cfg.eval_batch_size, which).items()}

        self.model = model
        self.result = fit(model, samples, evaluate, cfg.train_config(), out_dir,
                          {"famae": config_dict(cfg), "fields": self.field_names}, self._fingerprint(ds), resume)
        return self.result

    def _require(self) -> FAMAEModel:
        if self.model is None:
            raise RuntimeError("FAMAE: no trained model; call fit() or FAMAE.load() first")
        return self.model

    @torch.no_grad()
    def evaluate(self, ds: PreparedDataset, split: str = "test") -> dict[str, float]:
        """Metric 1 and 2 (Recall/NDCG@5,10) on ``split`` ('valid'|'test'): keys ``m1/recall@10`` ..."""
        model = self._require()
        if model.features.shape[0] != ds.num_items:
            raise ValueError(f"FAMAE.evaluate: model has {model.features.shape[0]} items, dataset {ds.name!r} has {ds.num_items}")
        model.eval()
        windows, targets = eval_windows(ds, split, self.config.max_len)
        return model.metrics(windows, targets, self.config.eval_batch_size)

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """[N, J*d] float32: row i = concat of item i's J field embeddings (field order)."""
        model = self._require()
        return model.emb.concat(model.features).float().cpu().numpy()

    def export(self, ds: PreparedDataset, out_dir: str | os.PathLike[str]) -> Path:
        """Write the embedding folder (resid.io format) with ``ds``'s item ids."""
        model = self._require()
        if model.features.shape[0] != ds.num_items:
            raise ValueError(f"FAMAE.export: model has {model.features.shape[0]} items, dataset {ds.name!r} has {ds.num_items}")
        meta = {"source": "famae", "dataset": ds.name, "fields": self.field_names, "d": self.config.d}
        return save_embeddings(out_dir, ds.item_ids, self.item_embeddings(), meta)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str], ds: PreparedDataset, device: str = "cpu") -> "FAMAE":
        """Load ``checkpoint`` (a run folder or its best/ or last/) for dataset ``ds``; refuses a
        checkpoint trained on another dataset or with another model config."""
        p = Path(checkpoint)
        if (p / "best").is_dir():
            p = p / "best"
        meta = read_checkpoint_meta(p)
        cfg = FAMAEConfig.from_dict({**meta["config"]["famae"], "device": device})
        obj = cls(cfg)
        fp = meta.get("fingerprint", {})
        check_fingerprint(dataset_fingerprint(ds), fp.get("dataset", {}), f"checkpoint {p}")
        model = obj._build(ds)
        load_weights(model, p)
        obj.model = model.to(resolve_device(device)).eval()
        return obj
