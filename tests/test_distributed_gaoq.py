"""Sharded GAOQ (resid.gaoq_dist.fit_sharded) on 2 CPU ranks vs the single-process GAOQ."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("resid_ext._C", reason="needs the compiled extension")

sys.path.insert(0, str(Path(__file__).parent))
import _dist_worker as W  # noqa: E402
from test_distributed import launch  # noqa: E402

from resid.gaoq import GAOQ  # noqa: E402
from resid.io import load_sids, save_embeddings  # noqa: E402
from resid.gaoq_dist import fit_sharded  # noqa: E402


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gaoq_ddp")
    z = W.gaoq_embeddings()
    np.save(out / "z.npy", z)
    save_embeddings(out / "emb", np.array([f"i{i}" for i in range(len(z))]), z)
    proc = launch("gaoq", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"dir": out, **json.loads((out / "result.json").read_text())}


@pytest.mark.parametrize("case", ["two_levels", "three_levels"])
def test_two_ranks_give_the_single_process_sids(ddp, case):
    z = W.gaoq_embeddings()
    kw = {k: v for k, v in W.GAOQ_CASES[case].items()}
    ref = GAOQ(seed=3, iters=5, progress=False, **kw)
    codes = ref.fit(z)
    got = np.array(ddp[case]["codes"])
    assert len(np.unique(got, axis=0)) == len(z)
    np.testing.assert_array_equal(got, codes)
    for lvl, c in enumerate(ref.tree.centroids):
        np.testing.assert_array_equal(np.array(ddp[case]["centroids"][lvl], dtype=np.float32), c)
    # The gathered tree is a complete quantizer: assign() on rank 0 == the single-process one.
    np.testing.assert_array_equal(np.array(ddp[case]["assign"]), ref.assign(z[:50]))


def test_cli_quantize_distributed_writes_the_single_process_sids(ddp):
    ids, codes = load_sids(ddp["dir"] / "q" / "sids.parquet")
    assert ids.tolist() == [f"i{i}" for i in range(500)]
    np.testing.assert_array_equal(codes, GAOQ(branching=(4, 3), seed=3, iters=5, progress=False).fit(W.gaoq_embeddings()))
    assert (ddp["dir"] / "q" / "quantize_report.json").is_file() and (ddp["dir"] / "q" / "quantizer.npz").is_file()


def test_single_process_fit_sharded_equals_gaoq():
    z = W.gaoq_embeddings()
    np.testing.assert_array_equal(fit_sharded(z, branching=(4, 3), seed=3, iters=5).codes,
                                  GAOQ(branching=(4, 3), seed=3, iters=5, progress=False).fit(z))


def test_sampled_level1_is_independent_of_world_size_and_balanced(ddp):
    z = W.gaoq_embeddings()
    kw = W.GAOQ_CASES["sampled"]
    single = fit_sharded(z, seed=3, iters=5, **kw)
    got = np.array(ddp["sampled"]["codes"])
    np.testing.assert_array_equal(got, single.codes)
    assert len(np.unique(got, axis=0)) == len(z)
    sizes = np.bincount(got[:, 0], minlength=4)
    assert sorted(sizes.tolist()) == [125, 125, 125, 125]  # exact balance across chunks (500 / 4)


def test_bad_arguments():
    z = W.gaoq_embeddings(20, 4)
    with pytest.raises(ValueError, match="level1_sample=2 must be >= b1=3"):
        fit_sharded(z, branching=(3, 2), level1_sample=2)
    with pytest.raises(ValueError, match="must be 2-D"):
        fit_sharded(np.zeros(5, np.float32), branching=(2, 2))
    bad = z.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="rows 7"):
        fit_sharded(bad, branching=(3, 2))
