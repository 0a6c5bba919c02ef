"""Quantizer diagnostics against hand-computed values, the PNG, and `resid quantize` end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from resid.diagnostics import history_target_overlap, plot_report, quantizer_report, within_code_cosine

# Inputs here are tiny: torch's thread pool only adds overhead (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4 items in 2-D with codes (c1, c2); rows 2 and 3 share a full SID (one collision).
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
Z = np.array([[1, 0], [3, 0], [0, 1], [0, 3]], dtype=np.float32)


def test_report_matches_hand_computed_values():
    r = quantizer_report(CODES, Z, code_sizes=[2, 2])
    l1, l2 = r["per_level"]
    assert r["collisions"] == 1 and r["max_prefix_size"] == 2
    assert l1["entropy"] == pytest.approx(1.0) and l1["max_entropy"] == pytest.approx(1.0)
    # c2 = (0, 1, 0, 0): H = -(3/4 log 3/4 + 1/4 log 1/4); prefixes (0,0),(0,1),(1,0)x2: H = 1.5
    assert l2["entropy"] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert l2["cond_entropy"] == pytest.approx(1.5 - 1.0)
    assert l1["used"] == 2 and l2["utilisation"] == 1.0
    # Total variance: mean ||z - (1,1)||^2 = (1 + 5 + 1 + 5) / 4 = 3. After c1: 1 per item.
    # After (c1, c2): only rows 2, 3 share a group (mean (0,2)), 1 each -> 0.5.
    assert l1["recon_rel_mse"] == pytest.approx(1 / 3)
    assert l2["recon_rel_mse"] == pytest.approx(0.5 / 3)
    # Level 1, centred on (1,1): code 0 pairs (0,-1),(2,-1), code 1 pairs (-1,0),(-1,2): 1/sqrt5 each.
    assert l1["within_code_cos"] == pytest.approx(1 / math.sqrt(5), rel=1e-6)
    # Level 2, centred on the c1 group means (2,0), (0,2): code 0 holds (-1,0), (0,-1), (0,1):
    # cosines 0, 0, -1 -> -1/3; code 1 has one item and is skipped.
    assert l2["within_code_cos"] == pytest.approx(-1 / 3, rel=1e-6)


def test_overlap_by_hand():
    hist = np.array([[-1, 0, 1], [2, 3, -1]])
    targets = np.array([3, 0])
    # user 0: target (1,0) vs (0,0), (0,1): L1 none, L2 one; user 1: target (0,0) vs (1,0) x2: L2 two.
    assert history_target_overlap(CODES, hist, targets) == [0.0, 0.75]
    r = quantizer_report(CODES, Z, histories=hist, targets=targets)
    assert [row["overlap"] for row in r["per_level"]] == [0.0, 0.75]


def test_within_code_cosine_identical_directions():
    u = np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, -3.0]])
    assert within_code_cosine(u, np.array([0, 0, 1, 1])) == pytest.approx((1.0 - 1.0) / 2)
    assert within_code_cosine(u, np.array([0, 0, 1, 2])) == pytest.approx(1.0)


def test_png_written(tmp_path):
    r = quantizer_report(CODES, Z)
    p = plot_report(CODES, r, tmp_path / "r.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- CLI -------------------------------------------------------------------------------
def _emb_folder(tmp_path, n=120, d=16, ids=None):
    from resid.io import save_embeddings

    z = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    ids = np.array([f"item{i}" for i in range(n)]) if ids is None else ids
    return save_embeddings(tmp_path / "emb", ids, z), z


def _prepared(tmp_path, n):
    from resid.data import PreparedDataset, save_prepared

    rng = np.random.default_rng(1)
    seqs = [rng.choice(n, size=6, replace=False) for _ in range(10)]
    ds = PreparedDataset(name="toy", fields=["item_id"], item_ids=np.array([f"item{i}" for i in range(n)][::-1]),
                         item_features=np.arange(1, n + 1)[:, None], vocab_sizes=[n + 2],
                         field_values=[np.array([f"item{i}" for i in range(n)][::-1])],
                         user_ids=np.array([f"u{i}" for i in range(10)]),
                         seq_offsets=np.arange(0, 61, 6), seq_items=np.concatenate(seqs), stats={})
    return save_prepared(ds, tmp_path / "prep"), ds


def test_cli_quantize_end_to_end(tmp_path, capsys):
    from resid.cli import main
    from resid.io import load_sids

    emb, z = _emb_folder(tmp_path)
    prep, ds = _prepared(tmp_path, 120)
    out = tmp_path / "out"
    assert main(["quantize", str(emb), str(out), "--branching", "4,3,auto", "--dataset", str(prep), "--compare"]) == 0
    printed = capsys.readouterr().out
    assert "gaoq" in printed and "hkm" in printed and "rqkmeans" in printed and "L2 within_code_cos" in printed
    ids, codes = load_sids(out / "sids.parquet")
    assert ids.tolist() == [f"item{i}" for i in range(120)] and codes.shape == (120, 3)
    rep = json.loads((out / "quantize_report.json").read_text())
    assert rep["method"] == "gaoq" and rep["collisions"] == 0 and set(rep["compare"]) == {"gaoq", "hkm", "rqkmeans"}
    # The overlap in the report is the one computed from the dataset's test split, remapped
    # from dataset rows (reversed ids here) to embedding rows.
    split = ds.split("test")
    remap = np.arange(120)[::-1]
    hist = np.where(split.histories >= 0, remap[np.maximum(split.histories, 0)], -1)
    want = history_target_overlap(codes, hist, remap[split.targets])
    assert [row["overlap"] for row in rep["per_level"]] == pytest.approx(want)
    assert (out / "quantize_report.png").read_bytes()[:4] == b"\x89PNG"
    from resid.quantizers import load_quantizer

    assert np.array_equal(load_quantizer(out / "quantizer.npz", dim=16).assign(z), codes)


def test_cli_bad_input(tmp_path, capsys):
    from resid.cli import main

    emb, _ = _emb_folder(tmp_path, n=6, ids=np.array(["a", "b", "a", "c", "d", "e"]))
    assert main(["quantize", str(emb), str(tmp_path / "o")]) == 1
    assert "duplicate ids" in capsys.readouterr().err
    np.save(emb / "item_ids.npy", np.array(["a", "b", "c"]))  # 3 ids for 6 rows
    assert main(["quantize", str(emb), str(tmp_path / "o")]) == 1
    assert "item_ids.npy has 3 ids" in capsys.readouterr().err
    emb2, _ = _emb_folder(tmp_path / "x", n=6)
    assert main(["quantize", str(emb2), str(tmp_path / "o"), "--branching", "8,2"]) == 1
    assert "6 items is fewer than the first branching factor b1=8" in capsys.readouterr().err
    assert main(["quantize", str(emb2), str(tmp_path / "o"), "--branching", "4,x"]) == 1
    assert "--branching must be integers" in capsys.readouterr().err
