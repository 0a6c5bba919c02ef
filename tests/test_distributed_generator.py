"""Generator training (resid.generator_train.train) and batched recommendation
(Recommender.recommend_rows) on 2 CPU ranks vs one process."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("resid_ext._C", reason="needs the compiled extension")

sys.path.insert(0, str(Path(__file__).parent))
import _dist_worker as W  # noqa: E402
from test_distributed import launch  # noqa: E402
from test_generator import _partial_run  # noqa: E402

from resid.data.dataset import save_prepared  # noqa: E402
from resid.generator_train import evaluate, load_checkpoint, train  # noqa: E402
from resid.io import save_sids  # noqa: E402
from resid.recommender import Recommender  # noqa: E402


def _close(got: list[dict], ref: list[dict]) -> None:
    assert [h["epoch"] for h in got] == [h["epoch"] for h in ref]
    np.testing.assert_allclose([h["loss"] for h in got], [h["loss"] for h in ref], rtol=1e-5)
    for g, r in zip(got, ref):  # validation metrics from beam search on (near-)identical weights
        assert {k: v for k, v in g.items() if k != "loss"} == {k: v for k, v in r.items() if k != "loss"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("gen")
    ds, sids, cfg = W.generator_setup()
    single = train(ds, sids, d / "single", cfg, progress=False)
    _partial_run(ds, sids, d / "ddp" / "from_single", cfg, stop_after=1, progress=False)  # 1 process, epoch 1 only
    save_prepared(ds, d / "ddp" / "ds")
    save_sids(d / "ddp" / "sids.parquet", ds.item_ids, sids)
    proc = launch("generator", d / "ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"dir": d, "single": single, "stdout": proc.stdout, **json.loads((d / "ddp" / "result.json").read_text())}


def test_generator_ddp_matches_single_process(runs):
    losses = [h["loss"] for h in runs["single"]["history"]]
    assert losses[-1] < losses[0]
    _close(runs["fresh"], runs["single"]["history"])


def test_generator_resumes_single_process_state_on_two_ranks(runs):
    _close(runs["resumed"], runs["single"]["history"])


def test_sharded_recommendation_equals_single_process_exactly(runs):
    ds, sids, _ = W.generator_setup()
    model, _ = load_checkpoint(runs["dir"] / "ddp" / "fresh")
    hist = ds.train_samples(max_len=6)[:, :-1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): same float reductions, bit-equal scores
    try:
        items, scores = Recommender(model, sids, beam=8, batch_size=5).recommend_rows(hist, k=4)
    finally:
        torch.set_num_threads(threads)
    assert len(hist) == 48  # 10 batches of 5: ranks decode batches 0-4 and 5-9
    np.testing.assert_array_equal(np.array(runs["items"]), items)
    np.testing.assert_array_equal(np.array(runs["scores"], dtype=np.float32), scores)


def test_cli_evaluate_distributed_reports_once_with_single_process_metrics(runs):
    ds, sids, _ = W.generator_setup()
    out = runs["stdout"]
    assert out.count('"checkpoint"') == 1, out  # rank 0 prints the report, rank 1 nothing
    report = json.loads(out[out.index("{"): out.rindex("}") + 1])
    model, _ = load_checkpoint(runs["dir"] / "ddp" / "fresh")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for split in ("valid", "test"):
            ref = evaluate(model, ds, sids, split, beam=8, batch_size=3, progress=False)
            assert report[split] == ref
    finally:
        torch.set_num_threads(threads)
