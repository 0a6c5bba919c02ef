"""Training, evaluation and checkpoints of the G-stage :class:`~resid.generator.Generator`.

Training samples are the prepared dataset's sliding windows (``train_samples``): the last
``max_history`` items before a position are the input, that position's item the target.
Teacher forcing, AdamW, cosine schedule over all steps; after every epoch the validation split
is decoded with beam search and the checkpoint with the best NDCG@10 is kept.

OUT_DIR after training:
    generator.safetensors   best weights        generator.json   config, SID digest, metrics
    train_state.pt          last epoch's full state (``resume=True`` continues from it)
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from resid import distributed as D
from resid.data.dataset import PreparedDataset
from resid.decode import StepFn
from resid.generator import Generator, GeneratorConfig, codes_per_level_of, trim_left_padding
from resid.io import atomic_write, write_json
from resid.metrics import metrics_from_ranks, ranks_from_topk
from resid.recommender import Recommender, check_sids, sids_digest
from resid.seqeval import length_grouped_order

WEIGHTS, META, STATE = "generator.safetensors", "generator.json", "train_state.pt"


def save_checkpoint(out_dir: str | os.PathLike[str], model: Generator, meta: dict[str, Any]) -> Path:
    """Write weights (safetensors) then ``generator.json`` (config + ``meta``), each atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json(out / META, {"config": model.cfg.to_dict(), **meta})
    return out


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """(model in eval mode, metadata) from a checkpoint folder."""
    from safetensors.torch import load_file

    p = Path(path)
    for f in (p / WEIGHTS, p / META):
        if not f.is_file():
            raise FileNotFoundError(f"{p} is not a generator checkpoint: missing {f.name} (written by `resid train`)")
    meta = json.loads((p / META).read_text())
    model = Generator(GeneratorConfig.from_dict(meta.pop("config")))
    model.load_state_dict(load_file(str(p / WEIGHTS)))
    return model.to(device).eval(), meta


def evaluate(model: Generator, ds: PreparedDataset, sids: np.ndarray, split: str = "test", *, beam: int | None = None,
             batch_size: int = 256, device: str | torch.device = "cpu", max_users: int | None = None,
             recommender: Recommender | None = None, trie: Any = None, step: StepFn | None = None,
             progress: bool = True) -> dict[str, float]:
    """Recall@5/10 and NDCG@5/10 under leave-one-out on ``split`` ('valid' | 'test').
    ``max_users`` evaluates the first that many users (for quick checks)."""
    rec = recommender or Recommender(model, sids, beam=beam, batch_size=batch_size, device=device, trie=trie, step=step)
    sp = ds.split(split, max_len=model.cfg.max_history)
    hist, targets = sp.histories, sp.targets
    if max_users is not None:
        hist, targets = hist[:max_users], targets[:max_users]
    items, _ = rec.recommend_rows(hist, k=min(10, rec.num_items), progress=progress)
    return {**metrics_from_ranks(ranks_from_topk(items, targets)), "users": int(len(targets))}


def _samples(ds: PreparedDataset, max_history: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(ds.train_samples(max_len=max_history + 1))
    keep = s[:, -1] >= 0
    return s[keep, :-1], s[keep, -1]


def train(ds: PreparedDataset, sids: Any, out_dir: str | os.PathLike[str], cfg: GeneratorConfig | None = None, *,
          device: str | torch.device = "cpu", resume: bool = False, valid_users: int | None = None,
          trie: Any = None, step: StepFn | None = None, progress: bool = True) -> dict[str, Any]:
    """Train on ``ds`` with SID table ``sids`` ([N, L], row i = item row i); keep the best
    checkpoint in ``out_dir``. Returns {"best_epoch", "best": valid metrics, "history": [...]}."""
    cfg = cfg or GeneratorConfig()
    codes = np.asarray(sids)
    if codes.ndim != 2 or codes.shape[0] != ds.num_items:
        raise ValueError(f"train: sids must have one row per dataset item ({ds.num_items}), got shape {list(codes.shape)}")
    # code ranges: the SIDs' own (max + 1), widened to the config's where that is larger
    have = codes_per_level_of(codes)
    if len(cfg.codes_per_level) == len(have):
        have = [max(a, b) for a, b in zip(have, cfg.codes_per_level)]
    cfg = GeneratorConfig.from_dict({**cfg.to_dict(), "codes_per_level": have})
    codes = check_sids(codes, cfg.codes_per_level, "train")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train: --device cuda requested but torch sees no CUDA device")
    # Distributed hook (resid.distributed): joins the torchrun group if there is one; rank r
    # trains on every W-th row of each global batch; rank 0 writes every file.
    D.init(device=str(device.type))
    if D.is_distributed():
        device = D.training_device(str(device))
        D.check_config({"config": cfg.to_dict(), "sids_sha256": sids_digest(codes), "dataset": ds.name,
                        "valid_users": valid_users}, "generator config")
    world = D.get_world_size()
    progress = progress and D.is_main()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = Generator(cfg).to(device)
    hist, target = _samples(ds, cfg.max_history)
    if len(target) == 0:
        raise ValueError(f"train: dataset {ds.name!r} has no training samples (every user needs >= 4 items)")
    sid_tok = model.vocab.tokens(torch.as_tensor(codes, device=device))
    enc_all, mask_all = model.vocab.encoder_input(sid_tok, hist.to(device))
    tgt_all = sid_tok[target.to(device)]
    steps_per_epoch = math.ceil(len(target) / cfg.batch_size)
    lengths = mask_all.sum(1).cpu()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.epochs * steps_per_epoch) / (cfg.epochs * steps_per_epoch))))
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume and (out / STATE).is_file():
        saved = torch.load(out / STATE, map_location=device, weights_only=False)
        if saved["config"] != cfg.to_dict() or saved["sids_sha256"] != sids_digest(codes):
            raise ValueError(f"train: {out / STATE} was written with another config or SID table; use a new OUT_DIR or drop --resume")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
    rec = Recommender(model, codes, beam=cfg.beam, device=device, trie=trie, step=step)
    step_loss = D.wrap_ddp_loss(model)  # model.loss, or DDP over it
    meta = {"sids_sha256": sids_digest(codes), "num_items": int(len(codes)), "dataset": ds.name}

    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"]
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout + shuffle: reproducible, also after resume
        perm = length_grouped_order(lengths, cfg.batch_size).to(device)  # similar lengths per batch
        if D.get_rank():  # other ranks: their own dropout stream, still reproducible
            torch.manual_seed(D.rank_seed(cfg.seed, epoch))
        model.train()
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"generator epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   file=sys.stderr, leave=False)
        for i in bar:
            batch = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            idx, weight = D.local_batch(batch)
            loss = step_loss(*trim_left_padding(enc_all[idx], mask_all[idx]), tgt_all[idx])
            if world > 1:  # weight makes DDP's gradient average the global-batch mean
                loss = loss * weight
                reported = D.all_reduce_sum(loss.detach()) / world
            else:
                reported = loss.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(reported) * len(batch)
            bar.set_postfix(loss=f"{float(reported):.4f}")
        valid = evaluate(model, ds, codes, "valid", max_users=valid_users, recommender=rec, progress=progress)
        record = {"epoch": epoch + 1, "loss": total / len(target), **{f"valid_{k}": v for k, v in valid.items()}}
        state["history"].append(record)
        if state["best"] is None or valid["ndcg@10"] > state["best"]["ndcg@10"]:
            state.update(best=valid, best_epoch=epoch + 1, bad_epochs=0)
            if D.is_main():
                save_checkpoint(out, model, {**meta, "epoch": epoch + 1, "valid": valid})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if progress:
            print(json.dumps(record), file=sys.stderr)
        full = {"config": cfg.to_dict(), "sids_sha256": meta["sids_sha256"], "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state}
        if D.is_main():
            atomic_write(out / STATE, lambda tmp: torch.save(full, tmp))
        D.barrier()  # the others wait until the checkpoint is complete
    return {"best_epoch": state["best_epoch"], "best": state["best"], "history": state["history"]}


def align_sids(ds: PreparedDataset, item_ids: np.ndarray, codes: np.ndarray, source: str = "sids") -> np.ndarray:
    """SID table ([N, L] int64, row i = dataset item row i) from ``sids.parquet`` contents,
    matched by item id; raises ValueError naming dataset items without a SID."""
    pos = {str(s): i for i, s in enumerate(np.asarray(item_ids).astype(str))}
    rows = np.array([pos.get(str(s), -1) for s in ds.item_ids], dtype=np.int64)
    missing = np.nonzero(rows < 0)[0]
    if len(missing):
        ex = ", ".join(repr(str(ds.item_ids[i])) for i in missing[:3])
        raise ValueError(f"{source}: {len(missing)} of the dataset's {ds.num_items} items have no semantic ID (e.g. {ex})")
    return np.asarray(codes, dtype=np.int64)[rows]
