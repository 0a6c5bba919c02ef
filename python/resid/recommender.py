"""Top-K recommendations from a trained :class:`~resid.generator.Generator` and its SID table.

    rec = Recommender.load("runs/gen", "runs/sids.parquet")
    out = rec.recommend([["B01", "B07"], []], k=10)   # item ids (str) or item rows (int)
    out.items, out.scores, out.unknown                 # [U, k] rows, [U, k] scores, [U] skipped counts

Users are decoded in batches by :func:`resid.decode.beam_search` (beam ``max(beam, k)``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from resid.decode import StepFn, beam_search
from resid.generator import Generator, trim_left_padding


@dataclass
class Recommendations:
    """items: [U, k] int64 item rows (-1 pads users whose beam found fewer than k SIDs);
    scores: [U, k] float32 sums of log-probs (-inf where items is -1); unknown: [U] int64 number of
    history items skipped as unknown; item_ids: [U, k] str original ids ('' for -1) when known."""

    items: np.ndarray
    scores: np.ndarray
    unknown: np.ndarray
    item_ids: np.ndarray | None = None


def sids_digest(sids: np.ndarray) -> str:
    """sha256 of the set of SIDs in an [N, L] table (ties a checkpoint to the SIDs it was trained
    on; row order is irrelevant to the model, so rows are sorted first)."""
    a = np.ascontiguousarray(np.unique(np.asarray(sids, dtype=np.int64), axis=0))
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def check_sids(sids: Any, codes_per_level: list[int], fn: str) -> np.ndarray:
    """Validate an [N, L] SID table against a model's code ranges; returns it as int64."""
    a = np.asarray(sids)
    if a.ndim != 2 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{fn}: sids must be a non-empty 2-D integer array [N, L], got shape {list(a.shape)} dtype {a.dtype}")
    a = a.astype(np.int64)
    L = len(codes_per_level)
    if a.shape[1] != L:
        raise ValueError(f"{fn}: checkpoint/SID mismatch: the model decodes {L} levels, sids have {a.shape[1]}")
    hi = np.asarray(codes_per_level)
    bad = (a < 0) | (a >= hi)
    if bad.any():
        r, l = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{fn}: checkpoint/SID mismatch: item row {r} has code {int(a[r, l])} at level {l + 1}, "
                         f"the model has codes 0..{int(hi[l]) - 1} there")
    uniq = np.unique(a, axis=0)
    if len(uniq) != len(a):
        raise ValueError(f"{fn}: sids has {len(a) - len(uniq)} duplicate rows; every item needs a unique SID")
    return a


class Recommender:
    """Batched top-K recommendation. ``unknown``: 'skip' drops history items not in the catalog
    (counted per user in ``Recommendations.unknown``), 'error' raises on the first one."""

    def __init__(self, model: Generator, sids: Any, *, item_ids: Sequence[str] | None = None, beam: int | None = None,
                 batch_size: int = 256, device: str | torch.device = "cpu", unknown: str = "skip",
                 trie: Any = None, step: StepFn | None = None):
        if unknown not in ("skip", "error"):
            raise ValueError(f"Recommender: unknown must be 'skip' or 'error', got {unknown!r}")
        if batch_size < 1:
            raise ValueError(f"Recommender: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sids = check_sids(sids, model.cfg.codes_per_level, "Recommender")
        self.num_items = len(self.sids)
        if item_ids is not None and len(item_ids) != self.num_items:
            raise ValueError(f"Recommender: {len(item_ids)} item_ids for {self.num_items} SID rows")
        self.item_ids = None if item_ids is None else np.asarray(item_ids).astype(str)
        self._row_of = None if self.item_ids is None else {s: i for i, s in enumerate(self.item_ids)}
        self.beam = int(beam if beam is not None else model.cfg.beam)
        if self.beam < 1:
            raise ValueError(f"Recommender: beam must be >= 1, got {self.beam}")
        self.batch_size, self.unknown, self.step = batch_size, unknown, step
        if trie is None:
            import resid_ext

            trie = resid_ext.Trie(torch.as_tensor(self.sids)).to(self.device)
        self.trie = trie
        self.sid_tokens = model.vocab.tokens(torch.as_tensor(self.sids, device=self.device))

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str], sids_path: str | os.PathLike[str], **kwargs: Any) -> "Recommender":
        """From a checkpoint folder (``resid train``'s OUT_DIR) and the ``sids.parquet`` it was trained on."""
        from resid.generator_train import load_checkpoint
        from resid.io import load_sids

        model, meta = load_checkpoint(checkpoint)
        ids, codes = load_sids(sids_path)
        want = meta.get("sids_sha256")
        if want is not None and sids_digest(codes) != want:
            raise ValueError(f"Recommender: checkpoint/SID mismatch: {checkpoint} was trained on other SIDs than {sids_path} "
                             f"({meta.get('num_items')} items then, {len(codes)} now)")
        return cls(model, codes, item_ids=ids, **kwargs)

    # ---- histories -> padded rows --------------------------------------------------------
    def _rows(self, histories: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        T = self.model.cfg.max_history
        out = np.full((len(histories), T), -1, dtype=np.int64)
        unknown = np.zeros(len(histories), dtype=np.int64)
        for u, hist in enumerate(histories):
            rows = []
            for x in hist:
                r = self._row(x)
                if r < 0:
                    if self.unknown == "error":
                        raise ValueError(f"Recommender: history {u} has unknown item {x!r} (not in the SID table; "
                                         "use unknown='skip' to drop such items)")
                    unknown[u] += 1
                else:
                    rows.append(r)
            rows = rows[-T:]
            if rows:
                out[u, T - len(rows):] = rows
        return out, unknown

    def _row(self, x: Any) -> int:
        if isinstance(x, (str, np.str_)):
            if self._row_of is None:
                raise ValueError(f"Recommender: got item id {x!r} but no item_ids were given; pass item rows (int)")
            return self._row_of.get(str(x), -1)
        r = int(x)
        return r if 0 <= r < self.num_items else -1

    # ---- recommending --------------------------------------------------------------------
    def recommend(self, histories: Sequence[Sequence[Any]], k: int = 10, progress: bool = False) -> Recommendations:
        """Top-``k`` items for each history (oldest first; item ids or rows). Empty histories are
        allowed (the model sees only eos). Raises ValueError for k < 1 or k > catalog size."""
        rows, unknown = self._rows(histories)
        items, scores = self.recommend_rows(rows, k, progress)
        ids = None
        if self.item_ids is not None:
            ids = np.where(items >= 0, self.item_ids[np.maximum(items, 0)], "")
        return Recommendations(items, scores, unknown, ids)

    def recommend_rows(self, histories: np.ndarray, k: int = 10, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """histories: [U, T] int64 item rows, left-padded with -1 (T > max_history keeps the most
        recent). Returns (items [U, k] int64, scores [U, k] float32)."""
        if not 1 <= k <= self.num_items:
            raise ValueError(f"Recommender: k must be in [1, {self.num_items}] (the catalog size), got {k}")
        h = np.asarray(histories, dtype=np.int64)
        if h.ndim != 2:
            raise ValueError(f"Recommender: histories must be 2-D [U, T], got shape {list(h.shape)}")
        if ((h < -1) | (h >= self.num_items)).any():
            raise ValueError(f"Recommender: histories hold item rows outside [-1, {self.num_items})")
        h = h[:, -self.model.cfg.max_history:]
        beam = max(self.beam, k)
        items = np.full((len(h), k), -1, dtype=np.int64)
        scores = np.full((len(h), k), -np.inf, dtype=np.float32)
        from tqdm import tqdm

        from resid import distributed as D

        # users in order of history length, so each batch trims its padding (results are per user)
        order = np.argsort((h >= 0).sum(axis=1), kind="stable")
        starts = list(range(0, len(h), self.batch_size))
        # Under torchrun this is collective: each rank decodes a contiguous block of the same
        # batches one process would; results are gathered back to their users (identical results).
        lo, hi = D.shard_range(len(starts))
        done = [np.zeros(0, dtype=np.int64)]
        for s in tqdm(starts[lo:hi], desc="recommend", unit="batch", disable=not progress or not D.is_main(), leave=False):
            rows = order[s : s + self.batch_size]
            hist = torch.as_tensor(h[rows], device=self.device)
            enc, mask = trim_left_padding(*self.model.vocab.encoder_input(self.sid_tokens, hist))
            top = beam_search(self.model, enc, mask, self.trie, beam, k, step=self.step)
            items[rows] = top.items.cpu().numpy()
            scores[rows] = top.scores.cpu().numpy()
            done.append(rows)
        if D.is_distributed():
            idx = np.concatenate(done)
            items = D.gather_by_index(items[idx], idx, len(h)).numpy()
            scores = D.gather_by_index(scores[idx], idx, len(h)).numpy()
        return items, scores
