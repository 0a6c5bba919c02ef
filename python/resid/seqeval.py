"""Helpers shared by FAMAE and the sequential baselines: turning item rows into field tokens,
leave-one-out evaluation windows, full-ranking metrics, and a dataset fingerprint."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np
import torch

from resid import distributed as D
from resid.data.dataset import ITEM_FIELD, PreparedDataset
from resid.metrics import metrics_from_ranks, target_ranks


def select_fields(ds: PreparedDataset, fields: list[str] | None, who: str) -> list[int]:
    """Column indices of ``fields`` in ``ds`` (None = all). ``item_id`` must come first."""
    if fields is None:
        return list(range(ds.num_fields))
    unknown = [f for f in fields if f not in ds.fields]
    if unknown:
        raise ValueError(f"{who}: unknown field(s) {unknown}; dataset {ds.name!r} has fields {ds.fields}")
    if not fields or fields[0] != ITEM_FIELD or len(set(fields)) != len(fields):
        raise ValueError(f"{who}: fields must start with {ITEM_FIELD!r} and not repeat, got {fields}")
    return [ds.fields.index(f) for f in fields]


def check_dataset(ds: PreparedDataset, who: str) -> None:
    """Reject datasets the models cannot use, with the reason."""
    if ds.num_items == 0 or ds.num_users == 0:
        raise ValueError(f"{who}: dataset {ds.name!r} is empty ({ds.num_items} items, {ds.num_users} users)")
    if not ds.fields or ds.fields[0] != ITEM_FIELD:
        raise ValueError(f"{who}: dataset {ds.name!r} must have {ITEM_FIELD!r} as field 0, has {ds.fields}")
    ids = np.asarray(ds.item_features[:, 0])
    if not np.array_equal(ids, np.arange(1, ds.num_items + 1)):
        raise ValueError(f"{who}: dataset {ds.name!r}: item_features[:, 0] must be item row + 1 (the item_id token convention)")


def dataset_fingerprint(ds: PreparedDataset) -> dict[str, Any]:
    """Identity of a dataset for checkpoint checks: sizes, fields and a hash of its contents."""
    h = hashlib.sha1()
    for a in (ds.item_features, ds.seq_offsets, ds.seq_items):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return {
        "name": ds.name,
        "num_items": ds.num_items,
        "num_users": ds.num_users,
        "fields": list(ds.fields),
        "vocab_sizes": [int(v) for v in ds.vocab_sizes],
        "sha1": h.hexdigest(),
    }


def lookup_tokens(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """features: [N, J] int64 tokens; rows: [B, T] int64 item rows, -1 = padding.
    Returns [B, T, J] int64 with padded positions all 0 (the pad token)."""
    valid = rows >= 0
    tok = features[rows.clamp(min=0)]
    return tok * valid[..., None]


def trim_padding(rows: torch.Tensor, keep_last: int = 1) -> torch.Tensor:
    """Drop leading columns that are padding in every row of ``rows`` ([B, T], -1 = pad),
    keeping at least ``keep_last`` columns. Positions are right-aligned and padding is masked,
    so valid positions compute the same values, only cheaper on short sequences."""
    nonpad = (rows >= 0).any(dim=0).nonzero()
    first = int(nonpad[0]) if len(nonpad) else rows.shape[1] - keep_last
    return rows[:, min(first, rows.shape[1] - keep_last) :]


def eval_windows(ds: PreparedDataset, which: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out windows for ``which`` ('valid'|'test'): [U, length] item rows whose last
    column is the target and the rest the most recent ``length - 1`` history items (-1 padded),
    and the targets [U]."""
    sp = ds.split(which, max_len=length - 1)
    windows = np.concatenate([sp.histories, sp.targets[:, None]], axis=1)
    return torch.from_numpy(windows), torch.from_numpy(sp.targets)


def ranking_metrics(
    score: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor, targets: torch.Tensor,
    batch_size: int, device: torch.device, ks: tuple[int, ...] = (5, 10),
) -> dict[str, float]:
    """Full ranking over all N items: ``score(windows_batch) -> [B, N]``; Recall/NDCG@ks from
    the target's 0-based rank (ties count against the target, see resid.metrics)."""
    if len(targets) == 0:
        raise ValueError("ranking_metrics: no users to evaluate (every sequence is too short for this split)")
    # Under torchrun each rank ranks a contiguous block of users; the gathered ranks are the
    # single-process ranks in the single-process order (resid.distributed.shard_range).
    # Users sorted by history length, so each batch trims to its own longest history
    # (the metrics are means over users, so the order does not change them).
    by_len = torch.argsort((windows >= 0).sum(1), stable=True)
    windows, targets = windows[by_len], targets[by_len]
    start, stop = D.shard_range(len(targets))
    ranks = [torch.zeros(0, dtype=torch.int64)]
    for s in range(start, stop, batch_size):
        e = min(s + batch_size, stop)
        w = windows[s:e].to(device)
        ranks.append(target_ranks(score(w).float(), targets[s:e].to(device)).cpu())
    return metrics_from_ranks(D.gather_concat(torch.cat(ranks)), ks)


def length_grouped_order(lengths: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                         group_batches: int = 32) -> torch.Tensor:
    """A shuffled epoch order in which each mini-batch holds samples of similar length.

    Histories here are short (median 6 items against a 32-item window), so a random batch is
    padded to its longest member and ~85% of the compute is padding. We shuffle, sort each
    chunk of ``group_batches`` batches by length, cut it into batches, and shuffle the batch
    order: batches stay random in content and order but cheap after ``trim_padding``.
    ``lengths``: [M] int. Returns a permutation of range(M), int64 [M]."""
    m = len(lengths)
    perm = torch.randperm(m, generator=generator)
    chunk = batch_size * group_batches
    parts = []
    for s in range(0, m, chunk):
        c = perm[s : s + chunk]
        parts.append(c[torch.argsort(lengths[c].cpu(), descending=True, stable=True)])
    order = torch.cat(parts) if parts else perm
    batches = order.split(batch_size)
    shuffle = torch.randperm(len(batches), generator=generator)
    return torch.cat([batches[i] for i in shuffle.tolist()]) if batches else order
