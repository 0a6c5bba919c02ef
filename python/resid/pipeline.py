"""`resid run`: the whole ReSID pipeline on one dataset, resumable stage by stage.

    data -> famae (E) -> quantize (Q, GAOQ) -> generator (G) -> test metrics
         -> sasrec, sasrec*, popularity           (the paper's item-ID baselines)
         -> text embeddings -> tiger (RQ-KMeans) / resid-text (GAOQ) -> generator   (when the
            data has item text and the encoder extra is installed)

Every stage writes into the run folder through :class:`resid.rundir.RunDir`, so an
interrupted run resumes where it stopped, and a finished stage is skipped when its settings
and inputs are unchanged. Results: ``metrics.json`` (keys ``<model>.<metric>@<k>``),
``report.md``, ``curves.png``, ``config.json``, and each stage's own files.

Under torchrun (``resid run --distributed``, or auto-detected) every rank runs every stage:
training stages are DDP (``resid.training.fit``, ``resid.generator_train.train``), evaluation
splits users across ranks (exact), GAOQ is sharded by parent (``resid.gaoq_dist``, the same
SIDs as one process); HKM / RQ-KMeans and the text encoder run on rank 0 while the others wait.
Only rank 0 writes the run folder (see :class:`resid.rundir.RunDir`), and every rank reads a
stage's outputs only after rank 0 finished them. See docs/distributed.md.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any

import numpy as np

from resid import distributed as D
from resid.io import load_embeddings, load_sids, save_sids, write_json
from resid.runconfig import fingerprint, paper_branching
from resid.rundir import RunDir

log = logging.getLogger("resid.run")

MODELS = ("resid", "resid-text", "tiger", "sasrec", "sasrec*", "popularity")
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def _dataclass_from(cls: Any, section: dict[str, Any], where: str, **extra: Any) -> Any:
    known = {f.name for f in dc_fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"config section [{where}]: unknown option(s) {unknown}; known: {sorted(known)}")
    return cls(**{**section, **{k: v for k, v in extra.items() if k in known}})


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}); use --device cpu")
    return device


def _exists(path: Path) -> bool:
    """Whether ``path`` exists, as rank 0 sees it (every rank must take the same resume decision)."""
    return D.on_rank0(path.exists)


class Pipeline:
    def __init__(self, config: dict[str, Any], out: str | Path, force: bool = False, progress: bool = True,
                 distributed: bool | None = None) -> None:
        """``distributed``: True requires a torchrun environment, None joins one if present
        (as every resid command does), False stays a single process."""
        self.cfg = config
        device = resolve_device(str(config.get("device", "auto")))
        D.init(distributed=distributed, device=device)
        # Under torchrun each rank works on its own GPU ("cuda" -> "cuda:LOCAL_RANK").
        self.device = str(D.training_device(device)) if D.is_distributed() else device
        D.check_config(config, "run config")
        self.seed = int(config.get("seed", 0))
        self.progress = progress
        self.run = RunDir(out, config, force=force)
        self.metrics: dict[str, float] = {}
        self.notes: list[str] = []
        self.curves: dict[str, list[dict[str, float]]] = {}
        self.quant_reports: dict[str, dict[str, Any]] = {}

    # ---- stages ----------------------------------------------------------------------
    def dataset(self) -> Any:
        from resid.data import load_prepared, open_dataset

        spec = self.cfg["data"]["spec"]
        extra = {k: v for k, v in self.cfg["data"].items() if k != "spec"}
        # Rank 0 prepares raw data into the run folder; every rank then opens that same copy.
        path = D.on_rank0(lambda: str(open_dataset(spec, cache_dir=self.run.root / "prepared", **extra).path))
        ds = load_prepared(path)
        self.data_fp = fingerprint(ds.name, ds.stats, ds.num_items, ds.num_users)
        D.check_config({"dataset": self.data_fp}, "prepared dataset")
        return ds

    def famae(self, ds: Any) -> Path:
        from resid.famae import FAMAE, FAMAEConfig

        sec = self.cfg["famae"]
        fp = fingerprint("famae", self.data_fp, sec, self.seed)

        def work(d: Path) -> dict[str, Any]:
            cfg = _dataclass_from(FAMAEConfig, sec, "famae", seed=self.seed, device=self.device, progress=self.progress)
            model = FAMAE(cfg)
            res = model.fit(ds, d / "checkpoint", resume=_exists(d / "checkpoint"))  # DDP under torchrun
            metrics = {"valid": model.evaluate(ds, "valid"), "test": model.evaluate(ds, "test")}  # collective
            if D.is_main():
                model.export(ds, d / "embeddings")
                write_json(d / "metrics.json", metrics)
                write_json(d / "history.json", res.history)
            return {"best_epoch": res.best_epoch}

        return self.run.stage("famae", fp, work)

    def quantize(self, name: str, emb_dir: Path, method: str, ds: Any) -> Path:
        from resid.cli.quantize import quantize
        from resid.diagnostics import plot_report

        sec = self.cfg["quantizer"]
        emb_fp = json.loads((emb_dir.parent / "stage.json").read_text())["fingerprint"] if (emb_dir.parent / "stage.json").exists() else str(emb_dir)
        fp = fingerprint("quantize", method, emb_fp, sec, self.seed)

        def work(d: Path) -> dict[str, Any]:
            ids, z, _ = load_embeddings(emb_dir, mmap=False)
            branching = self._branching(ds, len(ids))
            split = ds.split("test")  # for the history/target code overlap diagnostic
            # Under torchrun GAOQ is sharded by parent across ranks (resid.gaoq_dist.fit_sharded:
            # the same SIDs as one process); the other methods run on rank 0 alone (rank0_only).
            q, codes, report = quantize(np.asarray(z, dtype=np.float32), method, branching, int(sec.get("iters", 20)),
                                        self.seed, split.histories, split.targets, progress=self.progress and D.is_main())
            if D.is_main():
                save_sids(d / "sids.parquet", ids, codes)
                q.save(d / "quantizer.npz")
                write_json(d / "quantize_report.json", report)
                plot_report(codes, report, d / "quantize_report.png", title=f"{name}: {method}")
            return {"method": method, "branching": list(branching) if branching else "auto", "levels": int(codes.shape[1])}

        return self.run.stage(name, fp, work, rank0_only=method != "gaoq")

    def _branching(self, ds: Any, n: int) -> tuple[int, ...] | None:
        b = self.cfg["quantizer"].get("branching", "auto")
        if b == "auto":
            return None
        if b == "paper":
            pb = paper_branching(ds.name, n)
            if pb is None:
                self.notes.append(f"branching: {ds.name} ({n} items) has no Table 7 entry that fits; chose automatically (b1*b2 ~ N/15)")
            return pb
        return tuple(int(x) for x in b)

    def generator(self, name: str, ds: Any, sid_dir: Path) -> Path:
        from resid.generator import GeneratorConfig
        from resid.generator_train import align_sids, evaluate, load_checkpoint, train

        sec = dict(self.cfg["generator"])
        eval_beam = int(sec.pop("eval_beam", sec.get("beam", 50)))
        valid_users = sec.pop("eval_users", None)
        sid_fp = json.loads((sid_dir / "stage.json").read_text())["fingerprint"]
        fp = fingerprint("generator", sid_fp, self.data_fp, self.cfg["generator"], self.seed)

        def work(d: Path) -> dict[str, Any]:
            ids, codes = load_sids(sid_dir / "sids.parquet")
            sids = align_sids(ds, ids, codes, str(sid_dir / "sids.parquet"))
            cfg = _dataclass_from(GeneratorConfig, {**sec, "beam": eval_beam}, "generator", seed=self.seed)
            cfg.codes_per_level = [int(c) + 1 for c in sids.max(axis=0)]
            ckpt = d / "checkpoint"
            res = train(ds, sids, ckpt, cfg, device=self.device, resume=_exists(ckpt / "train_state.pt"),
                        valid_users=valid_users, progress=self.progress)  # DDP under torchrun
            model, _ = load_checkpoint(ckpt, device=self.device)
            full_beam = int(self.cfg["generator"].get("beam", 50))
            test = evaluate(model, ds, sids, "test", beam=full_beam, device=self.device, progress=self.progress)  # collective
            if D.is_main():
                write_json(d / "metrics.json", {"valid_best": res["best"], "test": test, "beam": full_beam})
                write_json(d / "history.json", res["history"])
            return {"best_epoch": res["best_epoch"]}

        return self.run.stage(name, fp, work)

    def sasrec(self, ds: Any, with_fields: bool) -> Path:
        from resid.baselines.sasrec import SASRec, SASRecConfig

        sec = self.cfg["sasrec"]
        name = "sasrec_star" if with_fields else "sasrec"
        fp = fingerprint(name, self.data_fp, sec, self.seed)

        def work(d: Path) -> dict[str, Any]:
            cfg = _dataclass_from(SASRecConfig, {**sec, "with_fields": with_fields}, "sasrec", seed=self.seed,
                                  device=self.device, progress=self.progress)
            model = SASRec(cfg)
            res = model.fit(ds, d / "checkpoint", resume=_exists(d / "checkpoint"))  # DDP under torchrun
            test = model.evaluate(ds, "test")  # collective
            if D.is_main():
                write_json(d / "metrics.json", {"test": test})
                write_json(d / "history.json", res.history)
            return {"best_epoch": res.best_epoch}

        return self.run.stage(name, fp, work)

    def text_embeddings(self, ds: Any) -> Path | None:
        from resid.text import TextEncoderMissing, embed_text, has_item_text

        enabled = self.cfg["text"].get("enabled", "auto")
        if enabled is False or enabled == "off":
            self.notes.append("tiger / resid-text rows: skipped (text.enabled = off)")
            return None
        if not has_item_text(ds):
            self.notes.append(f"tiger / resid-text rows: skipped, dataset {ds.name} has no item text (title/description)")
            return None
        opts = {k: v for k, v in self.cfg["text"].items() if k != "enabled"}
        fp = fingerprint("text", self.data_fp, opts)
        try:
            def work(d: Path) -> dict[str, Any]:
                res = embed_text(ds, d / "embeddings", progress=self.progress, **opts)
                return {"encoder": res.encoder_name, "fallback_items": res.n_fallback}

            # The encoder runs on rank 0 alone; a missing encoder is then raised on every rank.
            return self.run.stage("text_embeddings", fp, work, rank0_only=True)
        except TextEncoderMissing as e:
            if enabled == "auto":
                self.notes.append(f"tiger / resid-text rows: skipped, no sentence encoder installed ({e})")
                return None
            raise

    # ---- the whole job -------------------------------------------------------------------
    def run_all(self) -> dict[str, float]:
        t0 = time.time()
        ds = self.dataset()
        log.info("dataset %s: %d users, %d items", ds.name, ds.num_users, ds.num_items)

        fam = self.famae(ds)
        self._collect_curve("famae", fam)
        q = self.quantize("quantize_gaoq", fam / "embeddings", str(self.cfg["quantizer"].get("method", "gaoq")), ds)
        gen = self.generator("generator", ds, q)
        self._collect("resid", gen)
        self._collect_curve("generator", gen)

        for with_fields in (False, True):
            s = self.sasrec(ds, with_fields)
            self._collect("sasrec*" if with_fields else "sasrec", s)
            self._collect_curve("sasrec*" if with_fields else "sasrec", s)

        from resid.baselines.popularity import popularity_metrics

        for k, v in popularity_metrics(ds, "test").items():  # collective under torchrun (users split)
            self.metrics[f"popularity.{k}"] = float(v)

        text = self.text_embeddings(ds)
        if text is not None:
            for model, method in (("tiger", "rqkmeans"), ("resid-text", "gaoq")):
                qs = self.quantize(f"quantize_{model}", text / "embeddings", method, ds)
                g = self.generator(f"generator_{model}", ds, qs)
                self._collect(model, g)

        self._finish(ds, time.time() - t0)
        return self.metrics

    def ablate(self, methods: list[str]) -> dict[str, dict[str, Any]]:
        """Q-stage ablation: one FAMAE embedding set, one generator config, one quantizer per
        row. Returns {method: {"metrics": test metrics, "report": quantizer diagnostics}}."""
        from resid.quantizers import QUANTIZERS

        bad = [m for m in methods if m not in QUANTIZERS]
        if bad or not methods:
            raise ValueError(f"--quantizer: unknown method(s) {bad}; choose from {sorted(QUANTIZERS)}")
        ds = self.dataset()
        fam = self.famae(ds)
        out: dict[str, dict[str, Any]] = {}
        for method in methods:
            q = self.quantize(f"quantize_{method}", fam / "embeddings", method, ds)
            g = self.generator(f"generator_{method}", ds, q)
            out[method] = {"metrics": json.loads((g / "metrics.json").read_text())["test"],
                           "report": json.loads((q / "quantize_report.json").read_text())}
        D.on_rank0(lambda: write_json(self.run.root / "ablation.json", out))
        return out

    # ---- results -----------------------------------------------------------------------------
    def _collect(self, model: str, stage_dir: Path) -> None:
        test = json.loads((stage_dir / "metrics.json").read_text())["test"]
        for m in METRICS:
            self.metrics[f"{model}.{m}"] = float(test[m])

    def _collect_curve(self, name: str, stage_dir: Path) -> None:
        path = stage_dir / "history.json"
        if path.exists():
            self.curves[name] = json.loads(path.read_text())

    def _finish(self, ds: Any, seconds: float) -> None:
        D.on_rank0(lambda: self._write_results(ds, seconds))  # every rank has the same metrics; rank 0 writes

    def _write_results(self, ds: Any, seconds: float) -> None:
        from resid.report import plot_curves, write_report

        root = self.run.root
        write_json(root / "metrics.json", self.metrics)
        for name in sorted(p.name for p in root.glob("quantize_*") if (p / "quantize_report.json").exists()):
            self.quant_reports[name.removeprefix("quantize_")] = json.loads((root / name / "quantize_report.json").read_text())
        plot_curves(self.curves, root / "curves.png")
        write_report(root / "report.md", ds, {**self.cfg, "device": self.device}, self.metrics, self.quant_reports, self.notes,
                     ran=self.run.ran, skipped=self.run.skipped, seconds=seconds)


def format_table(metrics: dict[str, float]) -> str:
    """Plain-text table: rows = models present, columns = Recall@5/10, NDCG@5/10."""
    rows = [m for m in MODELS if f"{m}.ndcg@10" in metrics]
    head = f"{'model':<12}" + "".join(f"{c:>11}" for c in METRICS)
    lines = [head, "-" * len(head)]
    for m in rows:
        lines.append(f"{m:<12}" + "".join(f"{metrics[f'{m}.{c}']:>11.4f}" for c in METRICS))
    return "\n".join(lines)


def format_ablation(rows: dict[str, dict[str, Any]]) -> str:
    """Quantizer ablation table: test metrics plus the diagnostics that predict them."""
    head = f"{'quantizer':<10}" + "".join(f"{c:>11}" for c in METRICS) + f"{'H(c2|c1)':>10}{'cos L2':>9}{'overlap L2':>11}"
    lines = [head, "-" * len(head)]
    for method, r in rows.items():
        per = r["report"].get("per_level", [])
        l2 = per[1] if len(per) > 1 else {}
        lines.append(f"{method:<10}" + "".join(f"{r['metrics'][c]:>11.4f}" for c in METRICS)
                     + f"{l2.get('cond_entropy', float('nan')):>10.3f}{l2.get('within_code_cos', float('nan')):>9.4f}"
                     + f"{l2.get('overlap', float('nan')):>11.4f}")
    return "\n".join(lines)
