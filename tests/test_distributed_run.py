"""`resid run --distributed` (the whole pipeline) under torchrun with 2 CPU ranks (gloo,
loopback) on the tiny slice tests/test_run.py uses: rank 0 writes the run folder, once; the
metrics equal a one-process run where the algorithms allow and a one-process evaluation of the
run's own checkpoints everywhere; a rerun skips every stage; a rank that raises stops every
rank promptly with its error."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("resid_ext._C", reason="needs the compiled extension")

sys.path.insert(0, str(Path(__file__).parent))
import _dist_worker as W
from _env import NEUTRAL_CWD, pythonpath
from resid.cli import main
from resid.pipeline import METRICS
from test_distributed import free_port, torchrun
from test_run import TINY, raw_slice  # noqa: F401  (raw_slice: the module-scoped fixture)

# SASRec without dropout has a deterministic loss, so DDP with the same global batch follows the
# one-process run (to float rounding); FAMAE draws random masks per rank, so it (and the SIDs and
# generator that follow from its embeddings) only matches statistically.
CONFIG = TINY.replace("sasrec: {epochs: 1,", "sasrec: {epochs: 1, dropout: 0.0,")
STAGES = ("famae", "quantize_gaoq", "generator", "sasrec", "sasrec_star")
MODELS = ("resid", "sasrec", "sasrec*", "popularity")


def _cli_args(raw: Path, out: Path, cfg: Path) -> list[str]:
    return ["run", "--data", str(raw), "--out", str(out), "--config", str(cfg), "--quiet"]


def _single_thread(fn):
    """Run ``fn()`` with one torch thread, as the ranks (OMP_NUM_THREADS=1): the same float
    reductions, so evaluations are bit-comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def single(raw_slice, cfg, tmp_path_factory) -> dict:  # noqa: F811
    out = tmp_path_factory.mktemp("single") / "run"
    assert _single_thread(lambda: main(_cli_args(raw_slice, out, cfg))) == 0
    return {"dir": out, "metrics": json.loads((out / "metrics.json").read_text())}


@pytest.fixture(scope="module")
def dist(raw_slice, cfg, tmp_path_factory) -> dict:  # noqa: F811
    """2 ranks through resid.cli.main, every file-finishing rename logged per rank."""
    logs = tmp_path_factory.mktemp("renames")
    out = tmp_path_factory.mktemp("dist") / "run"
    proc = torchrun([W.__file__, "cli", str(logs), *_cli_args(raw_slice, out, cfg), "--distributed"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"dir": out, "logs": logs, "proc": proc, "metrics": json.loads((out / "metrics.json").read_text())}


def test_rank0_writes_the_run_folder_once(dist):
    out, logs = dist["dir"], dist["logs"]
    assert dist["proc"].stdout.count("recall@5  recall@10") == 1, dist["proc"].stdout  # one table, from rank 0
    for f in ("metrics.json", "report.md", "curves.png", "config.json", "quantize_gaoq/sids.parquet",
              "quantize_gaoq/quantizer.npz", "quantize_gaoq/quantize_report.json", "quantize_gaoq/quantize_report.png",
              "famae/embeddings/embeddings.npy", "famae/metrics.json", "famae/history.json", "generator/metrics.json",
              "generator/checkpoint/generator.safetensors", "sasrec/metrics.json", "sasrec_star/metrics.json"):
        assert (out / f).is_file(), f
    for s in STAGES:
        assert json.loads((out / s / "stage.json").read_text())["stage"] == s
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.partial-*")) and not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp-*"))

    rank1 = logs / "renames.rank1"
    mine = [] if not rank1.exists() else [p for p in rank1.read_text().split() if p.startswith(str(out))]
    assert mine == [], f"rank 1 finished files in the run folder: {mine[:5]}"
    # files inside a stage are written into its partial folder, renamed to NAME/ at the end
    written = [re.sub(r"^\.(\w+)\.partial-\w+", r"\1", Path(p).relative_to(out).as_posix())
               for p in (logs / "renames.rank0").read_text().split() if p.startswith(str(out))]
    for f in ("metrics.json", "report.md", "curves.png", "config.json", "famae/metrics.json",
              "quantize_gaoq/sids.parquet", "generator/metrics.json", "sasrec/metrics.json", *STAGES):
        assert written.count(f) == 1, (f, written)


def test_metrics_equal_single_process_where_the_algorithms_allow(dist, single):
    got, ref = dist["metrics"], single["metrics"]
    assert set(got) == set(ref) == {f"{m}.{k}" for m in MODELS for k in METRICS}
    for k in METRICS:  # popularity: counts and sharded ranking, exact
        assert got[f"popularity.{k}"] == ref[f"popularity.{k}"]
    # SASRec / SASRec* (no dropout): the DDP trajectory equals the one-process one to float
    # rounding; allow one test user's worth in case rounding flips a near-tie in the ranking.
    users = json.loads((dist["dir"] / "generator" / "metrics.json").read_text())["test"]["users"]
    for name in ("sasrec", "sasrec_star"):
        h_got = json.loads((dist["dir"] / name / "history.json").read_text())
        h_ref = json.loads((single["dir"] / name / "history.json").read_text())
        np.testing.assert_allclose([h["loss"] for h in h_got], [h["loss"] for h in h_ref], rtol=1e-5)
    for m in ("sasrec", "sasrec*"):
        for k in METRICS:
            assert abs(got[f"{m}.{k}"] - ref[f"{m}.{k}"]) <= 1.0 / users, (m, k, got[f"{m}.{k}"], ref[f"{m}.{k}"])


def test_metrics_equal_single_process_evaluation_of_the_runs_checkpoints(dist):
    """Exact: sharded evaluation / sharded GAOQ of the distributed run == one process on the
    same checkpoints and embeddings."""
    from resid.baselines.sasrec import SASRec
    from resid.data import load_prepared
    from resid.famae import FAMAE
    from resid.generator_train import align_sids, evaluate, load_checkpoint
    from resid.io import load_embeddings, load_sids
    from resid.quantizers import make_quantizer

    out, got = dist["dir"], dist["metrics"]
    (prepared,) = [p for p in (out / "prepared").iterdir() if p.is_dir()]
    ds = load_prepared(prepared)

    famae = _single_thread(lambda: FAMAE.load(out / "famae" / "checkpoint", ds).evaluate(ds, "test"))
    assert famae == json.loads((out / "famae" / "metrics.json").read_text())["test"]
    for name, model in (("sasrec", "sasrec"), ("sasrec_star", "sasrec*")):
        sasrec = SASRec.load(out / name / "checkpoint", ds)
        test = _single_thread(lambda: sasrec.evaluate(ds, "test"))  # noqa: B023 - called right here
        assert {k: test[k] for k in METRICS} == {k: got[f"{model}.{k}"] for k in METRICS}

    ids, z, _ = load_embeddings(out / "famae" / "embeddings", mmap=False)
    sid_ids, codes = load_sids(out / "quantize_gaoq" / "sids.parquet")
    assert sid_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(codes, make_quantizer("gaoq", (4, 4), seed=0, iters=3, progress=False).fit(z))

    sids = align_sids(ds, sid_ids, codes)
    model, _ = load_checkpoint(out / "generator" / "checkpoint")
    test = _single_thread(lambda: evaluate(model, ds, sids, "test", beam=8, progress=False))
    assert {k: test[k] for k in METRICS} == {k: got[f"resid.{k}"] for k in METRICS}


def test_second_distributed_run_skips_every_stage(dist, raw_slice, cfg):  # noqa: F811
    out = dist["dir"]
    stamps = {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES}
    proc = torchrun(["-m", "resid", *_cli_args(raw_slice, out, cfg), "--distributed"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stderr.count("up to date, skipped") == len(STAGES), proc.stderr  # logged by rank 0 only
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES} == stamps
    assert json.loads((out / "metrics.json").read_text()) == dist["metrics"]


def test_ablate_fits_hkm_on_rank0_alone(dist, raw_slice, cfg, tmp_path):  # noqa: F811
    """`resid ablate --distributed` on a copy of the run: FAMAE and GAOQ are reused; HKM goes
    through the rank-0-only stage path (RunDir.stage(rank0_only=True)) and gives the one-process
    HKM codes."""
    from resid.io import load_embeddings, load_sids
    from resid.quantizers import make_quantizer

    out = tmp_path / "run"
    shutil.copytree(dist["dir"], out)
    proc = torchrun(["-m", "resid", "ablate", "--quantizer", "gaoq,hkm", "--data", str(raw_slice), "--out", str(out),
                     "--config", str(cfg), "--quiet", "--distributed"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.count("H(c2|c1)") == 1, proc.stdout
    for stage in ("famae", "quantize_gaoq"):
        assert f"stage {stage}: up to date, skipped" in proc.stderr
    rows = json.loads((out / "ablation.json").read_text())
    assert set(rows) == {"gaoq", "hkm"} and rows["hkm"]["report"]["collisions"] == 0
    ids, z, _ = load_embeddings(out / "famae" / "embeddings", mmap=False)
    hkm_ids, hkm = load_sids(out / "quantize_hkm" / "sids.parquet")
    assert hkm_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(hkm, make_quantizer("hkm", (4, 4), seed=0, iters=3, progress=False).fit(z))


def _launch_two_machines(args: list[str], env: dict[str, str], timeout: float = 120) -> list[tuple[int, str]]:
    """Like two machines: one torchrun launcher per rank (static rendezvous on loopback), so no
    launcher sees the other's worker and only resid itself can stop a blocked rank.
    Returns [(exit code, stdout + stderr)] per launcher (node rank 0, 1)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--nnodes=2",
                               f"--node-rank={n}", "--master-addr=127.0.0.1", f"--master-port={port}", *args],
                              env=env, cwd=NEUTRAL_CWD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in (0, 1)]
    try:
        return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.parametrize("fail_rank,stage", [(1, "famae"), (0, "quantize_gaoq")])
def test_failing_rank_stops_every_rank_promptly(raw_slice, cfg, tmp_path, fail_rank, stage):  # noqa: F811
    """The other rank is blocked in a collective (the stage's config check) that the failing
    rank never joins: it must stop with the failing rank's error, well before the process-group
    timeout (30 min), and every launcher must report exit code 1."""
    env = dict(os.environ, PYTHONPATH=pythonpath(os.environ.get("PYTHONPATH")), OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="", RESID_TEST_FAIL_RANK=str(fail_rank),
               RESID_TEST_FAIL_STAGE=stage)
    out = tmp_path / "run"
    t0 = time.monotonic()
    results = _launch_two_machines(["-m", "resid", *_cli_args(raw_slice, out, cfg), "--distributed"], env)
    elapsed = time.monotonic() - t0
    error = f"injected test failure (RESID_TEST_FAIL_RANK={fail_rank}) at the start of stage {stage}"
    other = 1 - fail_rank
    (rc_fail, log_fail), (rc_other, log_other) = results[fail_rank], results[other]
    assert rc_fail == 1 and rc_other == 1, (rc_fail, rc_other, log_fail[-3000:], log_other[-3000:])
    assert f"resid run (rank {fail_rank}): error: {error}" in log_fail, log_fail[-3000:]
    assert f"resid: rank {other} stopping: rank {fail_rank} failed in stage {stage}: RuntimeError: {error}" in log_other, log_other[-3000:]
    assert "Connection closed" not in log_other  # stopped by the report, not by a broken collective
    assert elapsed < 60, elapsed
    assert not (out / stage).exists() and not (out / "metrics.json").exists()
