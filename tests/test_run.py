"""`resid run` end to end on a tiny slice of the bundled amazon-scientific sample."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resid.cli import main
from resid.io import load_sids
from resid.pipeline import METRICS
from resid.rundir import RunDir

TINY = """
famae: {epochs: 1, batch_size: 256, d: 32, heads: 2, ffn: 64}
sasrec: {epochs: 1, batch_size: 256, d: 32, heads: 2, ffn: 64}
generator: {epochs: 1, batch_size: 256, d_model: 32, d_ff: 64, d_kv: 16, num_heads: 2, encoder_layers: 1,
            decoder_layers: 1, beam: 8, eval_beam: 4, eval_users: 30}
quantizer: {iters: 3, branching: [4, 4]}
text: {enabled: false}
data: {min_count: 3}
"""


@pytest.fixture(scope="module")
def raw_slice(tmp_path_factory) -> Path:
    """The first 1,200 users of the bundled sample (5-core is re-applied by prepare)."""
    import resid.data.builtin as b

    src = b.resolve_raw("builtin:amazon-scientific")
    events = pd.read_csv(src / "events.csv.gz", dtype=str)
    users = events["user_id"].drop_duplicates().iloc[:1200]
    events = events[events["user_id"].isin(users)]
    items = pd.read_csv(src / "items.csv.gz", dtype=str, keep_default_na=False)
    items = items[items["item_id"].isin(events["item_id"])][["item_id", "brand", "cat1", "cat2", "cat3"]]
    out = tmp_path_factory.mktemp("raw")
    events.to_csv(out / "events.csv", index=False)
    items.to_csv(out / "items.csv", index=False)
    return out


def _run(raw: Path, out: Path, cfg: Path, *extra: str) -> int:
    return main(["run", "--data", str(raw), "--out", str(out), "--config", str(cfg), "--quiet", *extra])


def test_run_writes_every_output_and_resumes(raw_slice, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert _run(raw_slice, out, cfg) == 0
    table = capsys.readouterr().out
    for model in ("resid", "sasrec", "sasrec*", "popularity"):
        assert model in table

    metrics = json.loads((out / "metrics.json").read_text())
    expected = {f"{m}.{k}" for m in ("resid", "sasrec", "sasrec*", "popularity") for k in METRICS}
    assert set(metrics) == expected
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    for m in ("resid", "sasrec", "sasrec*", "popularity"):  # NDCG@k <= Recall@k, and @5 <= @10
        assert metrics[f"{m}.ndcg@10"] <= metrics[f"{m}.recall@10"] + 1e-12
        assert metrics[f"{m}.recall@5"] <= metrics[f"{m}.recall@10"] + 1e-12

    ids, codes = load_sids(out / "quantize_gaoq" / "sids.parquet")
    assert len(np.unique(codes, axis=0)) == len(codes) and codes.shape[1] == 3
    for f in ("report.md", "curves.png", "config.json", "quantize_gaoq/quantize_report.json",
              "quantize_gaoq/quantize_report.png", "famae/embeddings/embeddings.npy", "generator/metrics.json"):
        assert (out / f).is_file(), f
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Quantizer diagnostics" in report and "resid" in report
    assert not list(out.glob(".*.partial-*")), "finished stages leave no partial folders"

    # A second run skips every stage and reproduces the metrics exactly (same seed).
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")}
    assert _run(raw_slice, out, cfg) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")} == stamp

    # Another config on the same --out: refused without --force ...
    merged = tmp_path / "tiny2.yaml"
    merged.write_text(TINY.replace("generator: {epochs: 1", "generator: {epochs: 2"))
    assert _run(raw_slice, out, merged) == 1
    assert "different config" in capsys.readouterr().err
    # ... and with --force only the generator stage is redone; FAMAE and GAOQ are reused.
    assert _run(raw_slice, out, merged, "--force") == 0
    assert (out / "famae" / "stage.json").stat().st_mtime_ns == stamp[out / "famae" / "stage.json"]
    assert (out / "generator" / "stage.json").stat().st_mtime_ns != stamp[out / "generator" / "stage.json"]


def test_run_rejects_missing_and_malformed_data(tmp_path, capsys):
    assert main(["run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "nope" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "events.csv").write_text("user_id,item_id\nu1,i1\n")  # no timestamp column, no items file
    assert main(["run", "--data", str(bad), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip()


def test_interrupted_stage_leaves_no_finished_folder(tmp_path):
    run = RunDir(tmp_path / "r", {"a": 1})

    def crash(d: Path) -> None:
        (d / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.stage("famae", "fp1", crash)
    assert not (tmp_path / "r" / "famae").exists()
    # the partial folder is kept for the stage's own resume, then replaced by the finished one
    assert run.stage("famae", "fp1", lambda d: {"ok": True}) == tmp_path / "r" / "famae"
    assert json.loads((tmp_path / "r" / "famae" / "stage.json").read_text())["fingerprint"] == "fp1"
    assert run.done("famae", "fp1") and not run.done("famae", "fp2")


def test_config_file_errors(tmp_path):
    from resid.runconfig import build_config, paper_branching

    bad = tmp_path / "c.yaml"
    bad.write_text("famae: {epochs: 1}\nbogus: {x: 1}\n")
    with pytest.raises(ValueError, match="bogus"):
        build_config("quick", bad)
    with pytest.raises(ValueError, match="preset"):
        build_config("fast")
    assert paper_branching("industrial_and_scientific", 30000) == (24, 80)
    assert paper_branching("amazon-scientific", 4344) is None  # Table 7's 24x80 prefixes need >= 19,200 items


def test_ablate_compares_quantizers_on_one_embedding_set(raw_slice, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "abl"
    args = ["ablate", "--quantizer", "gaoq,hkm", "--data", str(raw_slice), "--out", str(out), "--config", str(cfg), "--quiet"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "gaoq" in table and "hkm" in table and "H(c2|c1)" in table
    rows = json.loads((out / "ablation.json").read_text())
    assert set(rows) == {"gaoq", "hkm"}
    for r in rows.values():
        assert set(METRICS) <= set(r["metrics"]) and r["report"]["collisions"] == 0
    # one FAMAE embedding set feeds both quantizers; HKM and GAOQ share the tree, not the codes
    assert len(list(out.glob("famae"))) == 1
    g = load_sids(out / "quantize_gaoq" / "sids.parquet")[1]
    h = load_sids(out / "quantize_hkm" / "sids.parquet")[1]
    assert g.shape == h.shape
    assert main(["ablate", "--quantizer", "gaoq,bogus", "--data", str(raw_slice), "--out", str(tmp_path / "x"),
                 "--config", str(cfg), "--quiet"]) == 1
    assert "bogus" in capsys.readouterr().err


def test_text_rows_skip_cleanly_without_item_text(raw_slice, tmp_path):
    from resid.data import open_dataset
    from resid.pipeline import Pipeline
    from resid.runconfig import build_config

    ds = open_dataset(raw_slice, cache_dir=tmp_path / "cache", min_count=3)
    assert ds.item_texts is None  # the slice keeps no title/description columns
    pipe = Pipeline(build_config("quick", overrides={"text": {"enabled": "auto"}}), tmp_path / "r", progress=False)
    assert pipe.text_embeddings(ds) is None
    assert len(pipe.notes) == 1 and "has no item text" in pipe.notes[0]
    assert not (tmp_path / "r" / "text_embeddings").exists()
