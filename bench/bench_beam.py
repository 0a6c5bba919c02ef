"""Benchmark: the trie-constrained part of beam search (no model), resid vs plain torch vs the
Hugging Face way, on the same inputs. One JSON line per (config, tool) on stdout; progress on
stderr.

A search = L steps (one per SID level) over B users with beam W, with fixed random log-probs
[B, W, V] per level (the model's output, here given). Tools:
  resid-cpu         resid_ext.trie_beam_step (fused C++ step over the CSR trie)
  torch-vectorized  CSR gather of each live beam's children, pad to [B, W * maxdeg], torch.topk
  hf-prefix-fn      what `generate(prefix_allowed_tokens_fn=...)` does: a Python callback per
                    beam returns the allowed codes (prefix dict), -inf mask [B*W, V], topk over [B, W*V]
`same_topk`: final scores (atol 1e-5) and items equal resid's, per user. Warm-up excluded.
`seconds_per_search` is wall-clock; `cpu_seconds_per_search` is this process's CPU time (all
threads), which other jobs on a shared machine disturb much less.

    PYTHONPATH=$PWD/python:$PWD python bench/bench_beam.py [--items 20000 1000000] [--batch 32 256]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

import torch

from resid_ext import Trie, beam_start, trie_beam_step

NEG_INF = float("-inf")
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def random_sids(n: int, levels: int, codes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(codes**levels, generator=g)[:n]
    return torch.stack([(flat // codes ** (levels - 1 - j)) % codes for j in range(levels)], dim=1)


def resid_step(trie: Trie) -> Step:
    def step(lp, scores, nodes):
        return tuple(trie_beam_step(lp, scores, nodes, trie))
    return step


def torch_step(trie: Trie) -> Step:
    co, ct, cn = trie.child_offsets, trie.child_tokens, trie.child_nodes  # on the trie's device

    def step(lp, scores, nodes):
        B, W, _ = lp.shape
        live = scores > NEG_INF
        n = torch.where(live, nodes, torch.zeros_like(nodes))
        beg = co[n]
        deg = torch.where(live, co[n + 1] - beg, torch.zeros_like(beg))
        maxdeg = max(int(deg.max()), 1)
        j = torch.arange(maxdeg, device=lp.device)
        valid = j < deg[..., None]                                   # [B, W, maxdeg]
        e = (beg[..., None] + j).clamp(max=len(ct) - 1)
        code = torch.where(valid, ct[e], torch.zeros_like(e))
        cand = torch.where(valid, scores[..., None] + lp.gather(2, code), torch.full_like(lp[..., :1], NEG_INF))
        top, idx = cand.reshape(B, -1).topk(W, dim=1)
        e_sel = e.reshape(B, -1).gather(1, idx)
        dead = top == NEG_INF
        m1 = torch.full_like(e_sel, -1)
        return (top, torch.where(dead, m1, cn[e_sel]), torch.where(dead, m1, idx // maxdeg),
                torch.where(dead, m1, ct[e_sel]))
    return step


def hf_step(sids: torch.Tensor) -> Callable[..., Step]:
    """Returns a factory: the HF way keeps the prefix of every beam and asks a callback."""
    allowed: dict[tuple[int, ...], list[int]] = {}
    for row in sids.tolist():
        for k in range(len(row)):
            allowed.setdefault(tuple(row[:k]), []).append(row[k])
    allowed = {p: sorted(set(c)) for p, c in allowed.items()}

    def make() -> Step:
        prefixes: list[list[tuple[int, ...]]] = []

        def step(lp, scores, nodes):
            nonlocal prefixes
            B, W, V = lp.shape
            if not prefixes:
                prefixes = [[()] * W for _ in range(B)]
            mask = torch.full((B * W, V), NEG_INF)
            for i in range(B * W):  # prefix_allowed_tokens_fn(batch_id, input_ids) per beam
                codes = allowed.get(prefixes[i // W][i % W], [])
                mask[i, codes] = 0.0
            cand = (scores[..., None] + lp + mask.view(B, W, V)).view(B, -1)
            top, idx = cand.topk(W, dim=1)
            parent, code = idx // V, idx % V
            dead = top == NEG_INF
            par_l, code_l = parent.tolist(), code.tolist()
            prefixes = [[prefixes[b][par_l[b][r]] + (code_l[b][r],) for r in range(W)] for b in range(B)]
            m1 = torch.full_like(idx, -1)
            return top, m1, torch.where(dead, m1, parent), torch.where(dead, m1, code)
        return step
    return make


def run_search(step: Step, lps: list[torch.Tensor], B: int, W: int):
    device = lps[0].device
    scores, nodes = beam_start(B, W, device)
    parents_all, codes_all = [], []
    for lp in lps:
        scores, nodes, parents, codes = step(lp, scores, nodes)
        parents_all.append(parents)
        codes_all.append(codes)
    # Reconstruct each final beam's SID by following parents back (same for every tool).
    sid = torch.full((B, W, len(lps)), -1, dtype=torch.int64, device=device)
    slot = torch.arange(W, device=device).expand(B, W)
    for level in reversed(range(len(lps))):
        sid[..., level] = codes_all[level].gather(1, slot.clamp(min=0))
        slot = parents_all[level].gather(1, slot.clamp(min=0))
    return scores.cpu(), sid.cpu()  # the copy waits for the device: timings include all its work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[20000, 1000000])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: also time resid's CUDA step and the vectorised torch step on the GPU")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    W, L, V = args.beam, args.levels, args.codes
    for n in args.items:
        sids = random_sids(n, L, V, args.seed)
        t0 = time.perf_counter()
        trie = Trie(sids)
        build = time.perf_counter() - t0
        print(f"trie: {n} items, {trie.num_nodes} nodes, built in {build:.2f}s", file=sys.stderr)
        sid_to_item = {tuple(r): i for i, r in enumerate(sids.tolist())}
        hf_make = hf_step(sids)
        tools = [("resid-cpu", lambda: resid_step(trie), "cpu"), ("torch-vectorized", lambda: torch_step(trie), "cpu"),
                 ("hf-prefix-fn", hf_make, "cpu")]
        if args.device == "cuda":
            trie_gpu = trie.to("cuda")
            tools += [("resid-cuda", lambda: resid_step(trie_gpu), "cuda"),
                      ("torch-vectorized-cuda", lambda: torch_step(trie_gpu), "cuda")]
        for B in args.batch:
            g = torch.Generator().manual_seed(args.seed + B)
            lps = [torch.randn(B, W, V, generator=g).log_softmax(-1) for _ in range(L)]
            ref = None
            for tool, make, dev in tools:
                print(f"  {tool} items={n} batch={B}", file=sys.stderr)
                lps_dev = [lp.to(dev) for lp in lps]
                run_search(make(), lps_dev, B, W)  # warm-up
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.iters):
                    scores, sid = run_search(make(), lps_dev, B, W)
                sec = (time.perf_counter() - t0) / args.iters
                cpu = (time.process_time() - c0) / args.iters  # all threads' CPU time: robust to other jobs
                items = torch.tensor([[sid_to_item.get(tuple(s), -1) for s in row] for row in sid.tolist()])
                if ref is None:
                    ref = (scores, items)
                live = ref[0] > NEG_INF
                same = bool(torch.equal(items[live], ref[1][live]) and torch.equal(scores > NEG_INF, live)
                            and torch.allclose(scores[live], ref[0][live], rtol=0, atol=1e-5))
                print(json.dumps({"bench": "trie_beam_search", "tool": tool, "items": n, "levels": L, "codes": V,
                                  "batch": B, "beam": W, "iters": args.iters, "threads": torch.get_num_threads(),
                                  "seconds_per_search": round(sec, 6), "users_per_s": round(B / sec, 1),
                                  "cpu_seconds_per_search": round(cpu, 6),
                                  "trie_build_s": round(build, 3), "same_topk": same}), flush=True)


if __name__ == "__main__":
    main()
