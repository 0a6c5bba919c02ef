"""Beam-search decoding throughput: resid's decoder vs Hugging Face ``generate``.

Same weights (a paper-size generator, random init, loaded into ``T5ForConditionalGeneration``),
same users (random histories of 20 items), 3-level SIDs with 256 codes per level, beam 50.
HF runs ``generate(num_beams=W, num_return_sequences=W, prefix_allowed_tokens_fn=..., max_new_tokens=L,
length_penalty=0)``, the way users constrain T5 to valid SIDs today. One JSON line per
(config, tool) on stdout, progress on stderr:

    {"bench": "decode", "tool": "resid-cpu" | "hf-generate", "items": 20000, "batch": 32, "beam": 50,
     "users": ..., "seconds": ..., "users_per_s": ..., "outside_forward": 0.04 (resid only),
     "same_topk": 1.0, "max_score_diff": ..., "threads": 2}

``same_topk``: fraction of users whose top-``k`` item lists (k=10 and the full beam) are
identical between the two tools on the users both decoded; ``max_score_diff`` over those lists.

    OMP_NUM_THREADS=2 PYTHONPATH=python:. python bench/decode.py --items 20000,1000000 --batches 32,256
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from resid import decode as D
from resid.generator import BOS, EOS, PAD, Generator, GeneratorConfig, to_hf
from resid.recommender import Recommender


def log(msg: str) -> None:
    print(f"[bench/decode] {msg}", file=sys.stderr, flush=True)


def random_sids(n: int, levels: int, codes: int, seed: int) -> np.ndarray:
    """n distinct random SIDs (rows), codes uniform in [0, codes)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(codes**levels, size=n, replace=False)
    return np.stack([(flat // codes ** (levels - 1 - l)) % codes for l in range(levels)], axis=1).astype(np.int64)


class ForwardTimer:
    """Accumulates the time spent in the model's forward passes inside ``beam_search``
    (encoder, per-user cross K/V projection, decoder steps, LM head); the rest (log-softmax,
    beam step, cache reorder, item lookup, input building) is search overhead."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def patched(self) -> Iterator[None]:
        orig_init, orig_step = D._Decoder.__init__, D._Decoder.step
        timer = self

        def init(self: Any, model: Generator, enc: torch.Tensor, mask: torch.Tensor) -> None:
            t = time.perf_counter()
            orig_init(self, model, enc, mask)
            timer.seconds += time.perf_counter() - t

        def step(self: Any, tokens: torch.Tensor, pos: int) -> torch.Tensor:
            t = time.perf_counter()
            out = orig_step(self, tokens, pos)
            timer.seconds += time.perf_counter() - t
            return out

        orig_encode = Generator.encode

        def encode(self: Generator, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            t = time.perf_counter()
            out = orig_encode(self, tokens, mask)
            timer.seconds += time.perf_counter() - t
            return out

        orig_head = Generator.lm_head

        def head(self: Generator, x: torch.Tensor) -> torch.Tensor:
            t = time.perf_counter()
            out = orig_head(self, x)
            timer.seconds += time.perf_counter() - t
            return out

        D._Decoder.__init__, D._Decoder.step, Generator.encode, Generator.lm_head = init, step, encode, head  # type: ignore[method-assign]
        try:
            yield
        finally:
            D._Decoder.__init__, D._Decoder.step, Generator.encode, Generator.lm_head = (  # type: ignore[method-assign]
                orig_init, orig_step, orig_encode, orig_head)


def run_resid(rec: Recommender, hist: np.ndarray, batch: int, beam: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    rec.batch_size = batch
    rec.recommend_rows(hist[:batch], k=beam)  # warm-up
    timer = ForwardTimer()
    with timer.patched():
        t = time.perf_counter()
        items, scores = rec.recommend_rows(hist, k=beam)
        total = time.perf_counter() - t
    return items, scores, total, 1.0 - timer.seconds / total


def run_hf(hf: Any, model: Generator, sids: np.ndarray, sid_tok: torch.Tensor, hist: np.ndarray, batch: int,
           beam: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, float]:
    L = sids.shape[1]
    allowed: dict[tuple[int, ...], list[int]] = {}
    tok = sid_tok.numpy()
    for l in range(L):
        prefixes, inv = np.unique(tok[:, :l], axis=0, return_inverse=True) if l else (np.zeros((1, 0), np.int64), np.zeros(len(tok), np.int64))
        inv = inv.reshape(-1)
        # group next tokens by prefix
        nxt: dict[int, set[int]] = {}
        for i, t in zip(inv.tolist(), tok[:, l].tolist()):
            nxt.setdefault(i, set()).add(t)
        for i, ts in nxt.items():
            allowed[tuple(prefixes[i].tolist())] = sorted(ts)
    leaf = {tuple(r): i for i, r in enumerate(tok.tolist())}

    def prefix_fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return allowed.get(tuple(input_ids[1:].tolist()), [EOS])

    items = np.full((len(hist), beam), -1, dtype=np.int64)
    scores = np.full((len(hist), beam), -np.inf, dtype=np.float32)
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(hist), batch):
            h = torch.as_tensor(hist[s : s + batch])
            enc, mask = model.vocab.encoder_input(sid_tok, h)
            enc, mask = enc.to(device), mask.to(device)
            out = hf.generate(input_ids=enc, attention_mask=mask.long(), num_beams=beam, num_return_sequences=beam,
                              max_new_tokens=L, length_penalty=0.0, do_sample=False, early_stopping=True,
                              prefix_allowed_tokens_fn=prefix_fn, decoder_start_token_id=BOS, pad_token_id=PAD,
                              eos_token_id=EOS, output_scores=True, return_dict_in_generate=True)
            seqs = out.sequences[:, 1 : L + 1].reshape(len(h), beam, L).tolist()
            sc = out.sequences_scores.reshape(len(h), beam).float().cpu().numpy()
            for u in range(len(h)):
                items[s + u] = [leaf.get(tuple(q), -1) for q in seqs[u]]
                scores[s + u] = sc[u]
    return items, scores, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="20000", help="comma-separated catalog sizes (default 20000)")
    ap.add_argument("--batches", default="32,256", help="comma-separated user batch sizes (default 32,256)")
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--k", type=int, default=10, help="top-k compared between tools (default 10)")
    ap.add_argument("--users", type=int, default=512, help="users decoded by resid per config (default 512)")
    ap.add_argument("--hf-users", type=int, default=0, help="users decoded by HF per config (default: one batch)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="run both tools on this device (cuda: resid's CUDA trie step, HF generate on the GPU)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = GeneratorConfig()  # paper size: 4+4 layers, d 128, FFN 512, 4 heads x 32, 3 x 256 codes
    model = Generator(cfg).eval()
    hf = to_hf(model).to(args.device)
    rng = np.random.default_rng(args.seed)
    for n in [int(x) for x in args.items.split(",")]:
        sids = random_sids(n, cfg.num_levels, 256, args.seed)
        t = time.perf_counter()
        rec = Recommender(model, sids, beam=args.beam, device=args.device)
        log(f"{n} items: trie built in {time.perf_counter() - t:.2f}s")
        for batch in [int(x) for x in args.batches.split(",")]:
            users = max(args.users, batch)
            hist = rng.integers(0, n, size=(users, cfg.max_history))
            log(f"items={n} batch={batch}: resid on {users} users")
            r_items, r_scores, r_sec, outside = run_resid(rec, hist, batch, args.beam)
            hf_users = args.hf_users or batch
            log(f"items={n} batch={batch}: hf generate on {hf_users} users")
            h_items, h_scores, h_sec = run_hf(hf, model, sids, rec.sid_tokens.cpu(), hist[:hf_users], batch,
                                              args.beam, args.device)
            m = hf_users
            same_k = float((r_items[:m, : args.k] == h_items[:, : args.k]).all(1).mean())
            same_w = float((r_items[:m] == h_items).all(1).mean())
            diff = float(np.abs(r_scores[:m] - h_scores).max())
            common = {"bench": "decode", "items": n, "batch": batch, "beam": args.beam, "levels": cfg.num_levels,
                      "codes": 256, "history": cfg.max_history, "threads": args.threads, "device": args.device,
                      f"same_top{args.k}": same_k, f"same_top{args.beam}": same_w, "max_score_diff": diff}
            # outside_forward: host timers around asynchronous GPU calls mean nothing, so CPU only.
            extra = {"outside_forward": round(outside, 4)} if args.device == "cpu" else {}
            print(json.dumps({**common, "tool": f"resid-{args.device}", "users": users, "seconds": round(r_sec, 3),
                              "users_per_s": round(users / r_sec, 1), **extra}), flush=True)
            print(json.dumps({**common, "tool": "hf-generate", "users": m, "seconds": round(h_sec, 3),
                              "users_per_s": round(m / h_sec, 1)}), flush=True)


if __name__ == "__main__":
    main()
