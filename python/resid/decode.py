"""Trie-constrained beam search over a :class:`~resid.generator.Generator` (the G-stage's inference).

Per batch of B users, beam width W, L SID levels:

1. the encoder runs once per user; each decoder layer's cross-attention keys/values are projected
   once per user ([B, h, T, dk]) and shared by that user's W beams: the beams' queries are laid
   out [B, h, W, dk] so one batched matmul per layer attends all W beams to the user's keys
   (Hugging Face instead copies the encoder output W times and projects every copy);
2. decoding starts from one root beam per user (step 0 runs the decoder on [B, 1], not [B*W, 1]);
3. each of the L steps runs one KV-cached decoder position on [B*W, 1], takes log-softmax over the
   full vocabulary (as HF does, so scores agree token for token), slices the level's code range
   and calls the fused ``trie_beam_step`` kernel, which keeps the W best valid continuations;
   the self-attention cache is then reordered by the returned parent slots (the bos position's
   keys/values stay per user, broadcast over the beams);
4. the leaves reached after L steps map to item rows through ``trie.items``.

Scores are sums of log-probabilities (no length penalty: every SID has length L).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from resid.generator import BOS, Generator, mask_bias

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], Any]


class TopK(NamedTuple):
    """items: [B, K] int64 item rows (-1 where fewer than K valid SIDs); scores: [B, K] float32
    (sum of log-probs, -inf where items is -1), best first."""

    items: torch.Tensor
    scores: torch.Tensor


def _default_step() -> StepFn:
    import resid_ext

    def step(log_probs: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie: Any) -> Any:
        # nodes come from earlier steps of this loop: skip the value checks (a host sync each)
        return resid_ext.trie_beam_step(log_probs, scores, nodes, trie, check_values=False)

    return step


class _Decoder:
    """KV-cached incremental decoding state of ``model`` for one batch of users."""

    def __init__(self, model: Generator, enc: torch.Tensor, enc_mask: torch.Tensor):
        cfg = model.cfg
        self.model, self.h, self.dk = model, cfg.num_heads, cfg.d_kv
        B, T, _ = enc.shape
        self.B = B
        self.cross_bias = mask_bias(enc_mask, enc.dtype)  # [B, 1, 1, T]
        # cross-attention K/V once per user: [B, h, T, dk] per layer
        self.cross_kv = [
            (blk.cross_attn.k(enc).view(B, T, self.h, self.dk).transpose(1, 2),  # type: ignore[union-attr]
             blk.cross_attn.v(enc).view(B, T, self.h, self.dk).transpose(1, 2))  # type: ignore[union-attr]
            for blk in model.decoder
        ]
        L = self.L = cfg.num_levels
        # decoder self-attention position bias for query s vs keys 0..s: [h, L, L]
        self.self_bias = model.decoder[0].self_attn.position_bias(L, L, enc.device)[0]
        # q, k, v of self-attention in one GEMM: [3*h*dk, d]
        self.qkv = [torch.cat([b.self_attn.q.weight, b.self_attn.k.weight, b.self_attn.v.weight]) for b in model.decoder]
        # self-attention keys/values per decoder position p: [layers, R_p, 2*h*dk]. Position 0
        # (bos) is computed with one root beam per user, so it stays per user (R_0 = B) and is
        # broadcast over the beams, never reordered; positions >= 1 are per beam (R_p = B*W).
        # The last position's keys/values are never needed again, so they are not kept.
        self.kv: list[list[torch.Tensor]] = []

    def reorder(self, rows: torch.Tensor) -> None:
        """Beams now descend from rows ``rows`` ([B*W] int64 into the current rows, user-major)."""
        self.kv = [self.kv[0]] + [[t.index_select(0, rows) for t in layers] for layers in self.kv[1:]]

    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """tokens: [B*w] (w beams per user, user-major) at decoder position ``pos`` -> final decoder
        states [B*w, d] (before the LM head)."""
        m, h, dk, B = self.model, self.h, self.dk, self.B
        R = tokens.shape[0]
        w = R // B
        hd = h * dk
        x = m.embed(tokens)  # [R, d]
        bias = self.self_bias[:, pos, : pos + 1].t()  # [pos+1, h]
        keep = pos < self.L - 1
        new_kv: list[torch.Tensor] = []
        for i, blk in enumerate(m.decoder):
            a = blk.self_attn
            qkv = F.linear(blk.self_norm(x), self.qkv[i])  # [R, 3*h*dk]
            if keep:
                new_kv.append(qkv[:, hd:])
            q = qkv[:, :hd].view(B, w, 1, h, dk)
            # keys/values of positions 0..pos, each broadcastable to [B, w, h, dk]
            ks = [self.kv[0][i][:, :hd].view(B, 1, h, dk)] if pos else []
            vs = [self.kv[0][i][:, hd:].view(B, 1, h, dk)] if pos else []
            for p in range(1, pos):
                ks.append(self.kv[p][i][:, :hd].view(B, w, h, dk))
                vs.append(self.kv[p][i][:, hd:].view(B, w, h, dk))
            ks.append(qkv[:, hd : 2 * hd].view(B, w, h, dk))
            vs.append(qkv[:, 2 * hd :].view(B, w, h, dk))
            # at most L keys: elementwise products beat a batched matmul of [1 x dk] rows
            scores = torch.stack([(q[:, :, 0] * k).sum(-1) for k in ks], dim=2) + bias  # [B, w, pos+1, h]
            att = torch.softmax(scores, dim=2)
            out = sum(att[:, :, p].unsqueeze(-1) * v for p, v in enumerate(vs))  # [B, w, h, dk]
            x = x + a.o(out.reshape(R, hd))
            # cross-attention: all w beams of a user against that user's keys
            c = blk.cross_attn
            assert c is not None and blk.cross_norm is not None
            ck, cv = self.cross_kv[i]
            q = c.q(blk.cross_norm(x)).view(self.B, w, h, dk).transpose(1, 2)  # [B, h, w, dk]
            att = torch.softmax(torch.matmul(q, ck.transpose(-1, -2)) + self.cross_bias, dim=-1)  # [B, h, w, T]
            x = x + c.o(torch.matmul(att, cv).transpose(1, 2).reshape(R, h * dk))
            x = x + blk.ff.wo(torch.relu_(blk.ff.wi(blk.ff_norm(x))))
        if keep:
            self.kv.append(new_kv)
        return m.decoder_norm(x)

    def level_log_probs(self, x: torch.Tensor, off: int, size: int, chunk: int = 2048) -> torch.Tensor:
        """Decoder states [R, d] -> log-softmax over the full vocabulary, sliced to tokens
        ``off..off+size-1``: [R, size] float32. Row chunks keep the [rows, V] logits small (no
        huge short-lived allocations, each of which would cost page faults)."""
        out = x.new_empty(x.shape[0], size, dtype=torch.float32)
        for s in range(0, x.shape[0], chunk):
            logits = self.model.lm_head(x[s : s + chunk]).float()
            out[s : s + chunk] = logits[:, off : off + size] - torch.logsumexp(logits, dim=-1, keepdim=True)
        return out


@torch.inference_mode()
def beam_search(
    model: Generator,
    enc_tokens: torch.Tensor,
    enc_mask: torch.Tensor,
    trie: Any,
    beam: int,
    k: int | None = None,
    step: StepFn | None = None,
) -> TopK:
    """Top-``k`` (default ``beam``) SIDs per user by trie-constrained beam search of width ``beam``.

    enc_tokens, enc_mask: [B, T] encoder input (see ``SidVocab.encoder_input``); ``trie``: the
    trie of valid SIDs (``resid_ext.Trie``, on the tokens' device); ``step``: the beam-step
    function (default ``resid_ext.trie_beam_step``). Returns :class:`TopK` with item rows."""
    if beam < 1:
        raise ValueError(f"beam_search: beam must be >= 1, got {beam}")
    k = beam if k is None else k
    if not 1 <= k <= beam:
        raise ValueError(f"beam_search: k must be in [1, beam={beam}], got {k}")
    step = step or _default_step()
    was_training = model.training
    model.eval()
    try:
        B, W, vocab = enc_tokens.shape[0], beam, model.vocab
        dev = enc_tokens.device
        dec = _Decoder(model, model.encode(enc_tokens, enc_mask), enc_mask)
        scores = torch.full((B, W), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        nodes = torch.zeros(B, W, dtype=torch.int64, device=dev)
        tokens = torch.full((B,), BOS, dtype=torch.int64, device=dev)  # one root beam per user
        w = 1
        base = torch.arange(B, device=dev).unsqueeze(1)
        levels = list(zip(vocab.offsets, vocab.codes_per_level))
        for level, (off, size) in enumerate(levels):
            lp = dec.level_log_probs(dec.step(tokens, level), off, size).view(B, w, size)
            if w < W:  # the root beam sits in slot 0; the other slots are dead (-inf scores)
                lp = torch.cat([lp, lp.new_zeros(B, W - w, size)], dim=1)
            scores, nodes, parents, codes = step(lp.contiguous(), scores, nodes, trie)
            if level + 1 < len(levels):  # next input: each beam's chosen code, cache of its parent
                dec.reorder((base * w + parents.clamp(min=0)).reshape(-1))
                w = W
                tokens = (codes.clamp(min=0) + off).reshape(-1)
        live = torch.isfinite(scores)
        items = trie.items(torch.where(live, nodes, torch.zeros_like(nodes)))  # padded slots -> root -> -1
        items = torch.where(live, items, torch.full_like(items, -1))
        return TopK(items[:, :k].contiguous(), scores[:, :k].contiguous())
    finally:
        model.train(was_training)
