"""Small synthetic PreparedDatasets with learnable sequential structure, for FAMAE/SASRec tests."""
from __future__ import annotations

import numpy as np

from resid.data.dataset import PreparedDataset


def make_dataset(num_items: int = 40, num_users: int = 120, seq_len: tuple[int, int] = (5, 12),
                 field_sizes: tuple[int, ...] = (4, 6), seed: int = 0, name: str = "synth") -> PreparedDataset:
    """Items 0..N-1 with categorical fields ``f1, f2, ...`` (token = value + 1; vocab = n + 2).
    Each user walks item i -> i + 1 (mod N) with probability 0.8, else a random item, so the
    next item is predictable from the last one."""
    rng = np.random.default_rng(seed)
    fields = ["item_id"] + [f"f{k + 1}" for k in range(len(field_sizes))]
    feats = [np.arange(1, num_items + 1)]
    for n in field_sizes:
        feats.append(rng.integers(1, n + 1, num_items))
    item_features = np.stack(feats, axis=1).astype(np.int64)
    vocab = [num_items + 2] + [n + 2 for n in field_sizes]
    seqs = []
    for _ in range(num_users):
        L = int(rng.integers(seq_len[0], seq_len[1] + 1))
        s = [int(rng.integers(num_items))]
        while len(s) < L:
            nxt = (s[-1] + 1) % num_items if rng.random() < 0.8 else int(rng.integers(num_items))
            s.append(nxt)
        seqs.append(s)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return PreparedDataset(
        name=name, fields=fields, item_ids=np.array([f"i{i}" for i in range(num_items)]),
        item_features=item_features, vocab_sizes=vocab,
        field_values=[np.array([str(v) for v in range(n)]) for n in [num_items, *field_sizes]],
        user_ids=np.array([f"u{u}" for u in range(num_users)]), seq_offsets=offsets,
        seq_items=np.concatenate([np.asarray(s) for s in seqs] + [np.zeros(0)]).astype(np.int64),
    )
