"""The G-stage model: a T5-style encoder-decoder over semantic-ID tokens (paper Sec. 2, App. E).

Architecture (identical to Hugging Face ``T5ForConditionalGeneration`` with
``feed_forward_proj="relu"`` and tied embeddings, so weights load into it one to one, see
:func:`hf_state_dict`): one token embedding shared by encoder, decoder and the LM head (decoder
output scaled by d^-0.5 before it, as T5 does), pre-norm RMSNorm (no mean, no bias), attention
without 1/sqrt(d_kv) scaling (folded into the init, as T5 does), bucketed relative position bias
computed in the first layer of each stack and shared by the others, ReLU FFN, no biases anywhere.

Vocabulary (:class:`SidVocab`): 0 = pad, 1 = eos, 2 = bos (decoder start), then one token range
per SID level: code c of level l is token ``offset[l] + c``.
Encoder input: the flattened SIDs of the last ``max_history`` items, left-padded, then eos.
Decoder: ``[bos, c1, .., c_{L-1}]`` -> ``[c1, .., cL]`` (teacher forcing).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD, EOS, BOS = 0, 1, 2
NUM_SPECIAL = 3


@dataclass
class GeneratorConfig:
    """Model and training hyper-parameters; defaults are the paper's (Appendix E)."""

    codes_per_level: list[int] = field(default_factory=lambda: [256, 256, 256])
    d_model: int = 128
    d_ff: int = 512
    num_heads: int = 4
    d_kv: int = 32
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    max_history: int = 20
    # training
    lr: float = 5e-3
    weight_decay: float = 1e-5
    batch_size: int = 2048
    epochs: int = 500
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    beam: int = 50
    seed: int = 0

    @property
    def num_levels(self) -> int:
        return len(self.codes_per_level)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GeneratorConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


class SidVocab:
    """Token layout for SIDs with ``codes_per_level[l]`` codes at level l."""

    def __init__(self, codes_per_level: list[int]):
        self.codes_per_level = [int(c) for c in codes_per_level]
        self.offsets = [NUM_SPECIAL + int(sum(self.codes_per_level[:l])) for l in range(len(self.codes_per_level))]
        self.size = NUM_SPECIAL + int(sum(self.codes_per_level))

    def tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [..., L] int64 -> tokens [..., L] int64."""
        return codes + torch.tensor(self.offsets, dtype=torch.int64, device=codes.device)

    def encoder_input(self, sid_tokens: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens for left-padded histories.

        sid_tokens: [N, L] int64 (``tokens(codes)``); history: [B, T] int64 item rows, -1 = pad.
        Returns tokens [B, T*L + 1] (pad where the item is missing, eos last) and mask [B, T*L + 1] bool."""
        B, T = history.shape
        L = sid_tokens.shape[1]
        valid = history >= 0
        tok = sid_tokens[history.clamp(min=0)]  # [B, T, L]
        tok = torch.where(valid.unsqueeze(-1), tok, torch.full_like(tok, PAD)).reshape(B, T * L)
        tok = torch.cat([tok, torch.full((B, 1), EOS, dtype=torch.int64, device=tok.device)], dim=1)
        mask = torch.cat([valid.repeat_interleave(L, dim=1), torch.ones(B, 1, dtype=torch.bool, device=tok.device)], 1)
        return tok, mask


def trim_left_padding(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row ([B, T] -> [B, T']). Exact: padded
    keys get zero attention weight and relative positions between real tokens are unchanged."""
    keep = mask.any(dim=0)
    first = int(keep.to(torch.int8).argmax()) if bool(keep.any()) else mask.shape[1]
    return tokens[:, first:], mask[:, first:]


def relative_position_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucketing of relative positions ``rel = key_pos - query_pos`` (same as HF)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).to(torch.long) * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


class RMSNorm(nn.Module):
    """T5 LayerNorm: scale only, no mean subtraction, variance in float32."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


class Attention(nn.Module):
    def __init__(self, cfg: GeneratorConfig, has_bias: bool, bidirectional: bool):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.h, self.dk = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.bidirectional = bidirectional
        self.cfg = cfg
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.num_heads) if has_bias else None
        self.dropout = cfg.dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, h*dk] -> [B, h, T, dk]"""
        return x.view(x.shape[0], x.shape[1], self.h, self.dk).transpose(1, 2)

    def position_bias(self, q_len: int, k_len: int, device: torch.device, q_offset: int = 0) -> torch.Tensor:
        """[1, h, q_len, k_len] bias for queries at ``q_offset..`` against keys ``0..k_len-1``."""
        assert self.relative_attention_bias is not None
        qp = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        kp = torch.arange(k_len, device=device)[None, :]
        b = relative_position_bucket(kp - qp, self.bidirectional, self.cfg.num_buckets, self.cfg.max_distance)
        return self.relative_attention_bias(b).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: [B, Tq, d], kv: [B, Tk, d], bias: broadcastable to [B, h, Tq, Tk] -> [B, Tq, d]."""
        q, k, v = self.heads(self.q(x)), self.heads(self.k(kv)), self.heads(self.v(kv))
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias
        attn = F.dropout(torch.softmax(scores.float(), dim=-1).type_as(scores), self.dropout, self.training)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape[0], x.shape[1], self.h * self.dk)
        return self.o(out)


class FeedForward(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(F.dropout(F.relu(self.wi(x)), self.dropout, self.training))


class Block(nn.Module):
    """Pre-norm residual block: self-attention, [cross-attention,] FFN."""

    def __init__(self, cfg: GeneratorConfig, decoder: bool, has_bias: bool):
        super().__init__()
        self.self_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.self_attn = Attention(cfg, has_bias, bidirectional=not decoder)
        self.cross_norm = RMSNorm(cfg.d_model, cfg.eps) if decoder else None
        self.cross_attn = Attention(cfg, False, True) if decoder else None
        self.ff_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.ff = FeedForward(cfg)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, self_bias: torch.Tensor, enc: torch.Tensor | None = None,
                cross_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_norm(x)
        x = x + F.dropout(self.self_attn(h, h, self_bias), self.dropout, self.training)
        if self.cross_attn is not None:
            assert self.cross_norm is not None and enc is not None and cross_bias is not None
            x = x + F.dropout(self.cross_attn(self.cross_norm(x), enc, cross_bias), self.dropout, self.training)
        return x + F.dropout(self.ff(self.ff_norm(x)), self.dropout, self.training)


def mask_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Key mask [B, T] bool -> additive bias [B, 1, 1, T] (0 kept, dtype-min dropped, as HF T5)."""
    return ((~mask).to(dtype) * torch.finfo(dtype).min)[:, None, None, :]


class Generator(nn.Module):
    """T5 encoder-decoder over SID tokens. ``forward`` is the teacher-forced training pass;
    inference goes through :func:`resid.decode.beam_search`, which uses :meth:`encode` and the
    decoder layers directly (with a KV cache)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab = SidVocab(cfg.codes_per_level)
        self.embed = nn.Embedding(self.vocab.size, cfg.d_model)
        self.encoder = nn.ModuleList([Block(cfg, False, i == 0) for i in range(cfg.encoder_layers)])
        self.encoder_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.decoder = nn.ModuleList([Block(cfg, True, i == 0) for i in range(cfg.decoder_layers)])
        self.decoder_norm = RMSNorm(cfg.d_model, cfg.eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """T5's init (HF ``T5PreTrainedModel._init_weights``, factor 1)."""
        d, dk, h, ff = self.cfg.d_model, self.cfg.d_kv, self.cfg.num_heads, self.cfg.d_ff
        self.embed.weight.normal_(0.0, 1.0)
        for m in self.modules():
            if isinstance(m, Attention):
                m.q.weight.normal_(0.0, (d * dk) ** -0.5)
                m.k.weight.normal_(0.0, d**-0.5)
                m.v.weight.normal_(0.0, d**-0.5)
                m.o.weight.normal_(0.0, (h * dk) ** -0.5)
                if m.relative_attention_bias is not None:
                    m.relative_attention_bias.weight.normal_(0.0, d**-0.5)
            elif isinstance(m, FeedForward):
                m.wi.weight.normal_(0.0, d**-0.5)
                m.wo.weight.normal_(0.0, ff**-0.5)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens, mask: [B, T] -> encoder states [B, T, d]."""
        x = F.dropout(self.embed(tokens), self.cfg.dropout, self.training)
        bias = self.encoder[0].self_attn.position_bias(tokens.shape[1], tokens.shape[1], tokens.device)
        bias = bias + mask_bias(mask, x.dtype)
        for blk in self.encoder:
            x = blk(x, bias)
        return F.dropout(self.encoder_norm(x), self.cfg.dropout, self.training)

    def forward(self, enc_tokens: torch.Tensor, enc_mask: torch.Tensor, dec_tokens: torch.Tensor) -> torch.Tensor:
        """enc_tokens, enc_mask: [B, T]; dec_tokens: [B, S] -> logits [B, S, V] float32."""
        enc = self.encode(enc_tokens, enc_mask)
        S = dec_tokens.shape[1]
        causal = torch.ones(S, S, dtype=torch.bool, device=dec_tokens.device).tril()
        self_bias = self.decoder[0].self_attn.position_bias(S, S, dec_tokens.device)
        self_bias = self_bias + (~causal).float() * torch.finfo(torch.float32).min
        cross_bias = mask_bias(enc_mask, enc.dtype)
        x = F.dropout(self.embed(dec_tokens), self.cfg.dropout, self.training)
        for blk in self.decoder:
            x = blk(x, self_bias, enc, cross_bias)
        x = F.dropout(self.decoder_norm(x), self.cfg.dropout, self.training)
        return self.lm_head(x)

    def lm_head(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder states [..., d] -> logits [..., V] (tied embedding, T5's d^-0.5 scale)."""
        return F.linear(x * self.cfg.d_model**-0.5, self.embed.weight)

    def loss(self, enc_tokens: torch.Tensor, enc_mask: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy over the full vocabulary. target_tokens: [B, L]."""
        B = target_tokens.shape[0]
        dec_in = torch.cat([torch.full((B, 1), BOS, dtype=torch.int64, device=target_tokens.device),
                            target_tokens[:, :-1]], dim=1)
        logits = self(enc_tokens, enc_mask, dec_in)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target_tokens.reshape(-1))

    @torch.no_grad()
    def sequence_log_prob(self, enc_tokens: torch.Tensor, enc_mask: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced sum of log p(token) over the L target tokens, log-softmax over the
        full vocabulary (the beam-search score of that SID). target_tokens: [B, L] -> [B]."""
        B = target_tokens.shape[0]
        dec_in = torch.cat([torch.full((B, 1), BOS, dtype=torch.int64, device=target_tokens.device),
                            target_tokens[:, :-1]], dim=1)
        lp = torch.log_softmax(self(enc_tokens, enc_mask, dec_in).float(), dim=-1)
        return lp.gather(-1, target_tokens.unsqueeze(-1)).squeeze(-1).sum(-1)


# ---- Hugging Face interop (tests and bench/decode.py) --------------------------------------------
def hf_config(cfg: GeneratorConfig) -> Any:
    """A ``transformers.T5Config`` describing exactly this architecture."""
    from transformers import T5Config

    return T5Config(
        vocab_size=SidVocab(cfg.codes_per_level).size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.encoder_layers, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets, relative_attention_max_distance=cfg.max_distance,
        dropout_rate=cfg.dropout, layer_norm_epsilon=cfg.eps, feed_forward_proj="relu",
        is_encoder_decoder=True, use_cache=True,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=BOS,
    )


def hf_state_dict(model: Generator) -> dict[str, torch.Tensor]:
    """Our parameters under Hugging Face T5 names (``T5ForConditionalGeneration.load_state_dict``)."""
    sd: dict[str, torch.Tensor] = {"shared.weight": model.embed.weight, "lm_head.weight": model.embed.weight,
                                   "encoder.embed_tokens.weight": model.embed.weight,
                                   "decoder.embed_tokens.weight": model.embed.weight,
                                   "encoder.final_layer_norm.weight": model.encoder_norm.weight,
                                   "decoder.final_layer_norm.weight": model.decoder_norm.weight}

    def attn(prefix: str, a: Attention) -> None:
        for n in ("q", "k", "v", "o"):
            sd[f"{prefix}.{n}.weight"] = getattr(a, n).weight
        if a.relative_attention_bias is not None:
            sd[f"{prefix}.relative_attention_bias.weight"] = a.relative_attention_bias.weight

    for stack, blocks in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, blk in enumerate(blocks):
            p = f"{stack}.block.{i}.layer"
            attn(f"{p}.0.SelfAttention", blk.self_attn)
            sd[f"{p}.0.layer_norm.weight"] = blk.self_norm.weight
            ff = 1
            if blk.cross_attn is not None:
                assert blk.cross_norm is not None
                attn(f"{p}.1.EncDecAttention", blk.cross_attn)
                sd[f"{p}.1.layer_norm.weight"] = blk.cross_norm.weight
                ff = 2
            sd[f"{p}.{ff}.DenseReluDense.wi.weight"] = blk.ff.wi.weight
            sd[f"{p}.{ff}.DenseReluDense.wo.weight"] = blk.ff.wo.weight
            sd[f"{p}.{ff}.layer_norm.weight"] = blk.ff_norm.weight
    return {k: v.detach().clone() for k, v in sd.items()}


def to_hf(model: Generator) -> Any:
    """A ``T5ForConditionalGeneration`` (eval mode) holding a copy of ``model``'s weights."""
    from transformers import T5ForConditionalGeneration

    hf = T5ForConditionalGeneration(hf_config(model.cfg))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [m for m in missing if not m.endswith("embed_tokens.weight")]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: weight names do not match T5 (missing {missing}, unexpected {unexpected})")
    return hf.eval()


def codes_per_level_of(sids: np.ndarray) -> list[int]:
    """Code range per level of an [N, L] SID table: max code + 1."""
    return [int(c) + 1 for c in np.asarray(sids).max(axis=0)]
