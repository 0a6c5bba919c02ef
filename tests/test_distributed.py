"""resid.distributed: 2 ranks on CPU (gloo, loopback) launched by torchrun, compared with the
single-process run computed here. Workers live in tests/_dist_worker.py."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resid import distributed as D

sys.path.insert(0, str(Path(__file__).parent))
import _dist_worker as W  # noqa: E402
from _env import NEUTRAL_CWD, pythonpath  # noqa: E402



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    """Launch ``args`` (a script and its arguments, or ``-m module ...``) under torchrun with ``nproc`` CPU ranks on loopback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH"))
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=NEUTRAL_CWD)


def launch(scenario: str, out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    return torchrun([W.__file__, scenario, str(out)], nproc)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The single-process reference: 3 epochs, global batch 8, checkpoint after each epoch."""
    out = tmp_path_factory.mktemp("single")
    losses, weights = W.train(out, epochs=3)
    return {"dir": out, "losses": losses, "weights": weights}


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, single) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    shutil.copy(single["dir"] / "epoch2_ckpt.pt", out / "single_epoch2.pt")
    proc = launch("main", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"dir": out, **json.loads((out / "result.json").read_text())}


def _weights(d: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in d.items()}


def test_torchrun_environment_detected(main_run):
    assert main_run["world_size"] == 2 and main_run["backend"] == "gloo" and main_run["enabled"]


def test_sharding_covers_every_index_once_up_to_padding(main_run):
    shards = main_run["shards"]
    assert [len(s) for s in shards] == [6, 6]  # 11 padded to 12
    perm = D.epoch_permutation(11, seed=7, epoch=3)
    padded = np.concatenate([perm, perm[:1]])
    # Strided split: rank r holds padded[r::2]; together they are the padded permutation.
    assert shards[0] == padded[0::2].tolist() and shards[1] == padded[1::2].tolist()
    flat = sorted(shards[0] + shards[1])
    assert set(flat) == set(range(11)) and len(flat) == 12
    assert sorted(perm.tolist()) == list(range(11))


def test_gather_by_index_restores_global_order(main_run):
    i = np.arange(11)
    assert main_run["gathered"] == np.stack([i * 10, i * i], axis=1).tolist()


def test_sharded_evaluation_equals_single_process_exactly(main_run):
    assert main_run["eval_ranks"] == W.eval_ranks(np.arange(23)).tolist()


def test_rank0_only_runs_once(main_run):
    assert main_run["rank0_only"] == ["ran", None]
    assert (main_run["dir"] / "touched.rank0").is_file() and not (main_run["dir"] / "touched.rank1").exists()


def test_local_batch_split_and_loss_weights(main_run):
    # Rank r takes rows r::2 of the global batch, weighted n_r * W / B so that DDP's gradient
    # average is the global-batch mean; with fewer rows than ranks, rank 1 reuses row 0 at weight 0.
    assert main_run["local_batches"] == [[[[0, 2, 4], 6 / 5], [[0], 2.0]], [[[1, 3], 4 / 5], [[0], 0.0]]]


def test_ddp_loss_curve_matches_single_process_global_batch(main_run, single):
    ddp = np.array(main_run["losses"])
    ref = np.array(single["losses"])
    assert ddp.shape == ref.shape == (15,)  # 3 epochs x 40 samples / global batch 8
    assert ref[-1] < ref[0]  # it actually trains
    np.testing.assert_allclose(ddp, ref, rtol=1e-5, atol=1e-7)
    for k, v in _weights(main_run["weights"]).items():
        torch.testing.assert_close(v, single["weights"][k], rtol=1e-5, atol=1e-6)


def test_checkpoints_written_once_by_rank0(main_run):
    out = main_run["dir"]
    assert not (out / "writes.rank1").exists()
    writes = (out / "writes.rank0").read_text().splitlines()
    assert writes == [
        "ckpt.pt epoch 1", "ckpt.pt epoch 2", "epoch2_ckpt.pt epoch 2", "ckpt.pt epoch 3",
        "resumed.pt epoch 3",
    ]
    assert not list(out.glob(".*.tmp"))
    assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == 3


def test_resume_single_process_checkpoint_on_two_ranks(main_run, single):
    np.testing.assert_allclose(main_run["resumed_losses"], single["losses"][10:], rtol=1e-5, atol=1e-7)
    for k, v in _weights(main_run["resumed_weights"]).items():
        torch.testing.assert_close(v, single["weights"][k], rtol=1e-5, atol=1e-6)


def test_resume_two_rank_checkpoint_in_one_process(main_run, single, tmp_path):
    losses, weights = W.train(tmp_path, epochs=3, resume=main_run["dir"] / "epoch2_ckpt.pt")
    np.testing.assert_allclose(losses, single["losses"][10:], rtol=1e-5, atol=1e-7)
    for k, v in weights.items():
        torch.testing.assert_close(v, single["weights"][k], rtol=1e-5, atol=1e-6)


def test_mismatched_configs_detected_on_every_rank(tmp_path):
    proc = launch("mismatch", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        msg = (tmp_path / f"error.rank{r}").read_text()
        assert "differs across ranks (ranks 0 vs ranks 1)" in msg, msg
        assert "lr: rank 0=0.01, rank 1=0.02" in msg, msg
        assert "batch" not in msg


def test_rank_killed_mid_epoch_leaves_last_checkpoint_usable(tmp_path, single):
    proc = launch("kill", tmp_path)
    assert proc.returncode != 0
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["losses"]) == 5
    np.testing.assert_allclose(state["losses"], single["losses"][:5], rtol=1e-5, atol=1e-7)
    losses, weights = W.train(tmp_path / "resume", epochs=3, resume=tmp_path / "ckpt.pt")
    np.testing.assert_allclose(losses, single["losses"][5:], rtol=1e-5, atol=1e-7)


# ---- single-process behaviour and bad input (no process group needed) ---------------------
def test_single_process_defaults(monkeypatch):
    for v in D.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    ctx = D.init()
    assert not ctx.enabled and ctx.world_size == 1 and ctx.is_main and D.is_main()
    assert D.shard_indices(5, epoch=0, seed=1).tolist() == D.epoch_permutation(5, 1, 0).tolist()
    assert D.gather_concat(np.arange(4)).tolist() == [0, 1, 2, 3]
    assert D.check_config({"a": 1}) == D.config_hash({"a": 1}) != D.config_hash({"a": 2})
    m = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(m) is m and D.unwrap(m) is m


def test_explicit_distributed_without_torchrun_is_a_clear_error(monkeypatch):
    for v in D.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(RuntimeError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT is not set; launch with `torchrun"):
        D.init(distributed=True)


@pytest.mark.parametrize("n,world", [(10, 3), (7, 4), (3, 5), (0, 2), (12, 4)])
def test_shard_indices_and_ranges_partition(n, world):
    shards = [D.shard_indices(n, 2, 9, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    flat = np.concatenate(shards)
    assert set(flat.tolist()) == set(range(n)) and len(flat) == -(-n // world) * world
    dropped = [D.shard_indices(n, 2, 9, rank=r, world_size=world, drop_last=True) for r in range(world)]
    assert sum(len(s) for s in dropped) == (n // world) * world and len(set(np.concatenate(dropped).tolist())) == (n // world) * world
    blocks = [D.shard_range(n, r, world) for r in range(world)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank 2 must be in"):
        D.shard_indices(5, 0, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch size 10 must be a positive multiple of the world size 4"):
        D.per_rank_batch(10, 4)
    with pytest.raises(ValueError, match="positions received no value"):
        D.gather_by_index(np.array([1.0]), np.array([0]), 2)
    with pytest.raises(ValueError, match="index must have shape"):
        D.gather_by_index(np.array([1.0, 2.0]), np.array([0]), 2)
