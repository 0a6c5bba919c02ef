"""Most-popular baseline: every user gets the items ranked by training-part interaction count."""
from __future__ import annotations

import torch

from resid.data.dataset import PreparedDataset
from resid.seqeval import check_dataset, eval_windows, ranking_metrics


def popularity_metrics(ds: PreparedDataset, split: str = "test", ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """Recall/NDCG@ks on ``split`` when every user is shown items by ``ds.item_popularity()``
    (counts over each user's training part only, so no valid/test leakage). Ties count
    against the target, as everywhere in resid.metrics."""
    check_dataset(ds, "popularity")
    pop = torch.from_numpy(ds.item_popularity()).double()
    windows, targets = eval_windows(ds, split, 2)
    return ranking_metrics(lambda w: pop.expand(len(w), -1), windows, targets, 4096, torch.device("cpu"), ks)
