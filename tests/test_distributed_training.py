"""resid.training.fit (the loop FAMAE/SASRec/the generator share) under torchrun with 2 CPU
ranks (gloo): same trajectory as one process with the same global batch, rank-0-only
checkpoints, resume across world sizes, sharded evaluation equal to one process."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _dist_worker as W  # noqa: E402
from synth_seq import make_dataset  # noqa: E402
from test_distributed import launch  # noqa: E402
from _env import NEUTRAL_CWD, pythonpath  # noqa: E402


def _close_history(got: list[dict], ref: list[dict]) -> None:
    assert [h["epoch"] for h in got] == [h["epoch"] for h in ref]
    for g, r in zip(got, ref):
        np.testing.assert_allclose([g["loss"], g["valid/neg_mse"]], [r["loss"], r["valid/neg_mse"]], rtol=1e-5, atol=1e-7)


def _close_weights(got: dict, ref: dict) -> None:
    for k, v in ref.items():
        torch.testing.assert_close(torch.tensor(got[k]) if not isinstance(got[k], torch.Tensor) else got[k], v, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> dict:
    """Single process: a full 4-epoch run, and a run that crashed in epoch 3 (last/ = epoch 2)."""
    d = tmp_path_factory.mktemp("fit_single")
    res, weights = W.run_fit(d / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        W.run_fit(d / "crashed", crash_epoch=3)
    return {"dir": d, "history": res.history, "weights": weights}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, ref) -> dict:
    out = tmp_path_factory.mktemp("fit_ddp")
    shutil.copytree(ref["dir"] / "crashed", out / "from_single")
    proc = launch("fit", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"dir": out, **json.loads((out / "result.json").read_text())}


def test_fit_under_ddp_matches_single_process(ddp, ref):
    assert len(ref["history"]) == 4 and ref["history"][-1]["loss"] < ref["history"][0]["loss"]
    _close_history(ddp["history"], ref["history"])
    _close_weights(ddp["weights"], ref["weights"])


def test_fit_checkpoints_written_by_rank0_only(ddp):
    out = ddp["dir"]
    assert not (out / "ckpt_writes.rank1").exists()
    writes = (out / "ckpt_writes.rank0").read_text().split()
    # fresh: best+last per improving epoch; every epoch improves here (4 x 2), then the resumed
    # run (epochs 3-4), then FAMAE (3 epochs, at least one best).
    assert writes.count("last") == 4 + 2 + 3
    assert not list(out.rglob(".*tmp*"))
    meta = json.loads((out / "fresh" / "last" / "config.json").read_text())
    assert meta["epoch"] == 4


def test_resume_single_process_checkpoint_on_two_ranks(ddp, ref):
    assert json.loads((ref["dir"] / "crashed" / "last" / "config.json").read_text())["epoch"] == 2
    _close_history(ddp["resumed_history"], ref["history"])
    _close_weights(ddp["resumed_weights"], ref["weights"])


def test_rank_killed_mid_epoch_then_resume_in_one_process(tmp_path, ref):
    proc = launch("fit_kill", tmp_path)
    assert proc.returncode != 0
    run = tmp_path / "run"
    assert json.loads((run / "last" / "config.json").read_text())["epoch"] == 2  # last complete epoch
    res, weights = W.run_fit(run, resume=True)  # 2 ranks -> 1 process
    _close_history(res.history, ref["history"])
    _close_weights(weights, ref["weights"])


def test_famae_trains_under_ddp_and_sharded_eval_equals_single_process(ddp):
    from resid.famae import FAMAE

    h0, h1 = ddp["famae_history_all"]
    assert h0 == h1  # every rank saw the same (gathered) metrics and early-stopping decisions
    assert len(h0) == 3 and h0[-1]["loss"] < h0[0]["loss"]
    t0, t1 = ddp["famae_test_all"]
    assert t0 == t1
    ds = make_dataset()
    single = FAMAE.load(ddp["dir"] / "famae", ds).evaluate(ds, "test")
    assert single == t0  # exact: sharded ranks gathered in order == single-process ranks


def test_cli_famae_under_torchrun(tmp_path):
    """`torchrun --nproc-per-node 2 -m resid famae ... --distributed`: one report, one set of
    files, and test metrics equal to a single-process evaluation of the written checkpoint."""
    import subprocess

    from resid.data.dataset import save_prepared
    from resid.famae import FAMAE
    from test_distributed import torchrun

    ds = make_dataset()
    save_prepared(ds, tmp_path / "ds")
    out = tmp_path / "run"
    proc = torchrun(["-m", "resid", "famae", str(tmp_path / "ds"), str(out), "--dim", "16", "--layers", "1",
                                 "--heads", "2", "--ffn", "32", "--max-len", "8", "--epochs", "2", "--batch-size", "64",
                                 "--no-progress", "--distributed"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("test: Metric1") == 1, proc.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs_run"] == 2
    assert FAMAE.load(out, ds).evaluate(ds, "test") == report["test"]
    assert (out / "embeddings" / "embeddings.npy").is_file()
    # --distributed outside torchrun: a clear error, not a hang.
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = pythonpath()
    bad = subprocess.run([sys.executable, "-m", "resid", "famae", str(tmp_path / "ds"), str(tmp_path / "x"), "--distributed"],
                         capture_output=True, text=True, env=env, cwd=NEUTRAL_CWD)
    assert bad.returncode == 1 and "launch with `torchrun" in bad.stderr, bad.stderr
