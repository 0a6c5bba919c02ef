"""The training loop shared by FAMAE, the SASRec baselines and (later) the generator.

Generic over any ``nn.Module`` with ``loss(batch) -> scalar tensor`` plus an
``evaluate(model) -> {name: float}`` callable (higher is better for the early-stopping metric).

On disk, under ``out_dir``:
    best/model.safetensors   weights of the best epoch so far on ``TrainConfig.metric``
    best/config.json         {"config", "fingerprint", "epoch", "metrics"}
    last/model.safetensors   weights after the latest finished epoch
    last/config.json         as above
    last/trainer.pt          optimizer, scheduler, RNG states, epoch, history, patience count
Each folder is written into a temporary sibling and renamed, so a crash never leaves a
half-written checkpoint. Resuming from ``last`` restores every piece of state, so the
continuation is identical to an uninterrupted run (same seed, same machine).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from resid import distributed as D
from resid.io import _json_default, atomic_write_dir
from resid.seqeval import length_grouped_order


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""


@dataclass
class TrainConfig:
    """Optimisation settings (paper Appendix E defaults)."""

    epochs: int = 500
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 0  # linear warm-up, then cosine decay to 0 over epochs * steps_per_epoch
    patience: int = 3  # stop after this many epochs without improving ``metric``
    metric: str = "valid/recall@10"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig: need lr > 0, weight_decay >= 0, warmup_steps >= 0; got {self.lr}, {self.weight_decay}, {self.warmup_steps}")


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """'cpu' or 'cuda[:i]' -> torch.device, with a clear error when CUDA is not usable."""
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: this torch build sees no CUDA device (torch {torch.__version__}); use --device cpu")
        return torch.device(device)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


# ---- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(target: Path, model: nn.Module, meta: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` (+ ``trainer.pt``) into folder ``target`` atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")

    atomic_write_dir(target, fill)


def read_checkpoint_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(folder) / "config.json"
    if not p.is_file() or not (Path(folder) / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (needs model.safetensors and config.json)")
    return json.loads(p.read_text())


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_fingerprint(expected: dict[str, Any], found: dict[str, Any], where: str) -> None:
    """Raise ValueError naming every key where a checkpoint disagrees with the current run."""
    exp = _flatten(json.loads(json.dumps(expected, default=_json_default)))
    found = _flatten(found)
    diff = [k for k in sorted(set(exp) | set(found)) if exp.get(k) != found.get(k)]
    if diff:
        detail = "; ".join(f"{k}: checkpoint has {found.get(k)!r}, this run has {exp.get(k)!r}" for k in diff[:6])
        raise ValueError(f"{where} was written for another dataset or model config ({detail})")


def load_weights(model: nn.Module, folder: str | os.PathLike[str], device: torch.device | str = "cpu") -> None:
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors"), device=str(device)))


# ---- the loop ----------------------------------------------------------------------------
def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    s = {"cpu": torch.get_rng_state(), "shuffle": gen.get_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    gen.set_state(s["shuffle"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def fit(
    model: nn.Module,
    samples: torch.Tensor,
    evaluate: Callable[[nn.Module], dict[str, float]],
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str],
    config: dict[str, Any],
    fingerprint: dict[str, Any],
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` on mini-batches of ``samples`` ([M, ...], any dtype; rows are shuffled
    each epoch) with AdamW + cosine schedule, evaluating after every epoch and stopping when
    ``cfg.metric`` has not improved for ``cfg.patience`` epochs. On return the model holds the
    best epoch's weights. ``config`` is stored for humans/loaders; ``fingerprint`` must match
    for ``resume`` to accept an existing ``last`` checkpoint."""
    cfg.validate()
    if len(samples) == 0:
        raise ValueError("fit: no training samples (the dataset is empty or every sequence is too short)")
    out = Path(out_dir)
    # Distributed hook: joins the process group under torchrun (no-op otherwise); every rank
    # must run the same config; rank r trains on every W-th row of each global batch.
    device = resolve_device(cfg.device)  # validates --device first
    D.init(device=cfg.device)
    if D.is_distributed():
        device = D.training_device(cfg.device)
    rank, world = D.get_rank(), D.get_world_size()
    if world > 1:
        D.check_config({"config": config, "fingerprint": fingerprint, "train": {**asdict(cfg), "device": None, "progress": None}}, "training config")
    last_dir, best_dir = out / "last", out / "best"
    if not resume and last_dir.exists():
        raise FileExistsError(f"{out} already holds a training run (last/); pass resume=True (--resume) to continue it, or pick a new folder")

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    samples = samples.to(device)
    steps_per_epoch = math.ceil(len(samples) / cfg.batch_size)
    # rows are -1-padded windows: group similar lengths so trim_padding can drop most padding
    lengths = (samples.reshape(len(samples), -1) >= 0).sum(1).cpu() if not samples.is_floating_point() else torch.zeros(len(samples), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.epochs * steps_per_epoch))

    step_loss = D.wrap_ddp_loss(model)  # model.loss, or DDP over it
    epoch, best_epoch, best_score, bad, history, stopped = 0, 0, -math.inf, 0, [], False
    if resume and last_dir.exists():
        meta = read_checkpoint_meta(last_dir)
        check_fingerprint(fingerprint, meta.get("fingerprint", {}), f"checkpoint {last_dir}")
        load_weights(model, last_dir, device)
        st = torch.load(last_dir / "trainer.pt", map_location="cpu", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"], gen, device)
        epoch, best_epoch, best_score, bad = st["epoch"], st["best_epoch"], st["best_score"], st["bad_epochs"]
        history, stopped = st["history"], st["stopped"]
        if D.is_main():
            print(f"resuming {out} after epoch {epoch} (best {cfg.metric}={best_score:.4f} at epoch {best_epoch})", file=sys.stderr)

    while not stopped and epoch < cfg.epochs:
        epoch += 1
        model.train()
        if rank:
            torch.manual_seed(D.rank_seed(cfg.seed, epoch))
        order = length_grouped_order(lengths, cfg.batch_size, gen).to(device)
        total, bar = 0.0, tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", disable=not cfg.progress or not D.is_main(), file=sys.stderr, leave=False)
        for step in bar:
            idx, weight = D.local_batch(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            loss = step_loss(samples[idx])
            if world > 1:
                loss = loss * weight
                reported = D.all_reduce_sum(loss.detach()).to(loss.device) / world  # the global-batch mean
            else:
                reported = loss.detach()
            if not torch.isfinite(reported):
                kept = f"{last_dir} (epoch {epoch - 1})" if last_dir.exists() else "none (failed in the first epoch)"
                raise TrainingDiverged(
                    f"loss became {reported.item()} at epoch {epoch}, step {step + 1}; stopped. Last good checkpoint: {kept}. "
                    "Try a lower lr or more warm-up steps."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(reported)
            bar.set_postfix(loss=f"{total / (step + 1):.4f}")
        model.eval()
        with torch.no_grad():
            metrics = dict(evaluate(model))
        metrics = D.broadcast_object(metrics)  # every rank takes rank 0's early-stopping decision
        if cfg.metric not in metrics:
            raise ValueError(f"fit: evaluate() returned no {cfg.metric!r}; it returned {sorted(metrics)}")
        row = {"epoch": epoch, "loss": total / steps_per_epoch, **metrics}
        history.append(row)
        score = metrics[cfg.metric]
        improved = score > best_score
        if improved:
            best_epoch, best_score, bad = epoch, score, 0
        else:
            bad += 1
        stopped = bad >= cfg.patience
        meta = {"config": config, "fingerprint": fingerprint, "epoch": epoch, "metrics": row}
        if improved and D.is_main():
            save_checkpoint(best_dir, model, meta)
        trainer_state = {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(gen, device),
            "epoch": epoch, "best_epoch": best_epoch, "best_score": best_score, "bad_epochs": bad,
            "history": history, "stopped": stopped,
        }
        if D.is_main():  # only rank 0 writes; the others wait until the files are complete
            save_checkpoint(last_dir, model, meta, trainer_state)
        D.barrier()
        if D.is_main():
            print(f"epoch {epoch}: loss {row['loss']:.4f} {cfg.metric} {score:.4f}" + (" *" if improved else ""), file=sys.stderr)

    if not (best_dir / "model.safetensors").is_file():
        raise RuntimeError(f"fit: no epoch produced a finite {cfg.metric} (history: {history}); nothing to keep")
    load_weights(model, best_dir, device)
    model.eval()
    return TrainResult(best_epoch=best_epoch, best_score=best_score, epochs_run=epoch, stopped_early=stopped, history=history)


def config_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict."""
    return json.loads(json.dumps(asdict(obj), default=_json_default))
