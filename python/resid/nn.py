"""Transformer building blocks shared by FAMAE and the SASRec baselines (one implementation).

Shapes: B batch, T sequence length, J fields, d model width, V vocabulary.
Sequences are left-padded; a position is valid where ``valid[b, t]`` is True.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FieldEmbedding(nn.Module):
    """One embedding table per field; a position's input is the sum over its J fields.

    Token 0 is padding (a zero row, no gradient); token ``vocab_sizes[j] - 1`` is field j's
    mask token, so the per-field learnable mask embedding is that table's last row."""

    def __init__(self, vocab_sizes: list[int], d: int) -> None:
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.tables = nn.ModuleList(nn.Embedding(v, d, padding_idx=0) for v in self.vocab_sizes)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.02)
            with torch.no_grad():
                t.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [..., J] int64 -> [..., d] float32 (sum of the J field embeddings)."""
        out = self.tables[0](tokens[..., 0])
        for j in range(1, len(self.tables)):
            out = out + self.tables[j](tokens[..., j])
        return out

    def concat(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [N, J] int64 -> [N, J*d]: the J field embeddings side by side (field order)."""
        return torch.cat([self.tables[j](tokens[:, j]) for j in range(len(self.tables))], dim=1)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + MHA(LN(x)), then x + FFN(LN(x)) with ReLU."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        if d % heads != 0:
            raise ValueError(f"Block: d={d} must be divisible by heads={heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ffn)
        self.ff2 = nn.Linear(ffn, d)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d]; attn_mask: [B, 1, T, T] bool, True = may attend. Returns [B, T, d]."""
        B, T, d = x.shape
        p = self.dropout if self.training else 0.0
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hs)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(B, T, d)), p, self.training)
        h = F.dropout(F.relu(self.ff1(self.ln2(x))), p, self.training)
        return x + F.dropout(self.ff2(h), p, self.training)


class Encoder(nn.Module):
    """Learnable position embedding + ``layers`` blocks + final LayerNorm.

    ``causal=False``: bidirectional over valid positions (FAMAE). ``causal=True``: position t
    sees valid positions <= t (SASRec). Every position may always attend to itself, so padded
    rows never see an all-masked row (which would give NaN); their outputs are ignored."""

    def __init__(self, d: int, layers: int, heads: int, ffn: int, dropout: float, max_len: int, causal: bool) -> None:
        super().__init__()
        self.max_len = max_len
        self.causal = causal
        self.pos = nn.Embedding(max_len, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, ffn, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """valid: [B, T] bool -> [B, 1, T, T] bool (query t, key s)."""
        B, T = valid.shape
        allowed = valid[:, None, None, :].expand(B, 1, T, T)
        eye = torch.eye(T, dtype=torch.bool, device=valid.device)
        if self.causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
        return allowed | eye

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d] input embeddings; valid: [B, T] bool. Returns [B, T, d]."""
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"Encoder: sequence length {T} exceeds max_len={self.max_len}")
        # Right-aligned positions: with left padding the last (target) slot is always max_len-1.
        pos = torch.arange(self.max_len - T, self.max_len, device=x.device)
        h = self.drop(x + self.pos(pos)[None])
        mask = self.attention_mask(valid)
        for blk in self.blocks:
            h = blk(h, mask)
        return self.ln(h)


def scaled_cosine(h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """sqrt(d) * cos(h_b, e_v): h [B, d], e [V, d] -> logits [B, V] (paper Sec. 3.1)."""
    d = h.shape[-1]
    return math.sqrt(d) * (F.normalize(h, dim=-1) @ F.normalize(e, dim=-1).T)
