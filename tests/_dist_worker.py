"""Worker for tests/test_distributed.py: run under torchrun (2 ranks, gloo, loopback) or
imported by the test itself for the single-process references. Not collected by pytest.

    python -m torch.distributed.run --nproc-per-node 2 tests/_dist_worker.py SCENARIO OUT_DIR
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from resid import distributed as D
from resid.metrics import target_ranks

N_SAMPLES, DIM, GLOBAL_BATCH, LR = 40, 6, 8, 1e-2


# ---- a tiny regression problem and model, identical on every rank -------------------------
def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, DIM, generator=g)
    y = (x @ torch.randn(DIM, 1, generator=g)).tanh() + 0.1 * torch.randn(N_SAMPLES, 1, generator=g)
    return x, y


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def save_ckpt(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, losses: list[float], log: Path) -> None:
    """Rank 0 writes atomically; each actual write is logged per rank (to prove 'written once')."""

    def write(tmp: Path) -> None:
        torch.save({"model": D.unwrap(model).state_dict(), "opt": opt.state_dict(), "epoch": epoch, "losses": losses}, tmp)
        with open(log / f"writes.rank{D.get_rank()}", "a") as f:
            f.write(f"{path.name} epoch {epoch}\n")

    D.rank0_write(path, write)


def train(out: Path, epochs: int, seed: int = 0, resume: Path | None = None, kill: tuple[int, int] | None = None,
          ckpt_name: str = "ckpt.pt") -> tuple[list[float], dict[str, torch.Tensor]]:
    """AdamW on MSE with global batch GLOBAL_BATCH split across ranks; a checkpoint after each
    epoch. Returns the per-step global mean losses (of this run's steps) and final weights."""
    x, y = make_data()
    model = make_model(seed + 1000 * D.get_rank())  # ranks start differently: DDP must sync them
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    start, losses = 0, []
    if resume is not None:
        state = torch.load(resume, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"]
    ddp = D.wrap_ddp(model)
    per_rank = D.per_rank_batch(GLOBAL_BATCH)
    for epoch in range(start, epochs):
        idx = D.shard_indices(N_SAMPLES, epoch, seed)
        for step, s in enumerate(range(0, len(idx), per_rank)):
            if kill is not None and (epoch, step) == kill and D.get_rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # a rank dies mid-epoch
            b = torch.from_numpy(idx[s : s + per_rank])
            loss = torch.nn.functional.mse_loss(ddp(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(D.all_reduce_sum(loss.detach()) / D.get_world_size()))
        save_ckpt(out / ckpt_name, ddp, opt, epoch + 1, losses, out)
        if epoch + 1 == 2:
            save_ckpt(out / f"epoch2_{ckpt_name}", ddp, opt, epoch + 1, losses, out)
    return losses, {k: v.detach().clone() for k, v in D.unwrap(ddp).state_dict().items()}


# ---- sharded evaluation --------------------------------------------------------------------
def eval_ranks(users: np.ndarray) -> torch.Tensor:
    """Target ranks of a fixed scorer for the given user rows: [len(users)] int64."""
    g = torch.Generator().manual_seed(5)
    user_emb = torch.randn(23, 4, generator=g)
    item_emb = torch.randn(17, 4, generator=g)
    targets = torch.randint(0, 17, (23,), generator=g)
    u = torch.from_numpy(users)
    # Round so that ties occur and the tie rule is exercised too.
    scores = (user_emb[u] @ item_emb.T).mul(2).round()
    return target_ranks(scores, targets[u])


def scenario_main(out: Path) -> dict:
    ctx = D.init()  # auto-detected from torchrun's environment
    D.check_config({"lr": LR, "batch": GLOBAL_BATCH, "seed": 0})
    res: dict = {"world_size": ctx.world_size, "backend": ctx.backend, "enabled": ctx.enabled}
    # Sharding: every rank's shard, gathered.
    shards = D.all_gather_varlen(D.shard_indices(11, epoch=3, seed=7))
    res["shards"] = [s.tolist() for s in shards]
    # gather_by_index: f(i) computed on the shard lands back at i.
    idx = D.shard_indices(11, epoch=3, seed=7)
    vals = np.stack([idx * 10, idx * idx], axis=1)
    res["gathered"] = D.gather_by_index(vals, idx, 11).tolist()
    # Sharded evaluation over contiguous user blocks, uneven (23 users, 2 ranks).
    a, b = D.shard_range(23)
    res["eval_ranks"] = D.gather_concat(eval_ranks(np.arange(a, b))).tolist()
    # @rank0_only: the body runs once (rank 0), every rank gets past the barrier.
    @D.rank0_only
    def touch() -> str:
        (out / f"touched.rank{D.get_rank()}").write_text("x")
        return "ran"

    res["rank0_only"] = _gather_objects(touch())
    # Each rank's part of a global batch and its loss weight (5 rows, and 1 row < world size).
    parts = [(p.tolist(), w) for p, w in (D.local_batch(torch.arange(5)), D.local_batch(torch.arange(1)))]
    res["local_batches"] = _gather_objects(parts)
    # DDP training from scratch, then a resume of a single-process checkpoint.
    losses, weights = train(out, epochs=3)
    res["losses"] = losses
    res["weights"] = {k: v.tolist() for k, v in weights.items()}
    rlosses, rweights = train(out, epochs=3, resume=out / "single_epoch2.pt", ckpt_name="resumed.pt")
    res["resumed_losses"] = rlosses
    res["resumed_weights"] = {k: v.tolist() for k, v in rweights.items()}
    return res


def scenario_mismatch(out: Path) -> dict:
    D.init()
    try:
        D.check_config({"lr": LR * (1 + D.get_rank()), "batch": GLOBAL_BATCH, "seed": 0})
    except RuntimeError as e:
        (out / f"error.rank{D.get_rank()}").write_text(str(e))
        return {}
    (out / f"error.rank{D.get_rank()}").write_text("no error")
    return {}


def scenario_kill(out: Path) -> dict:
    D.init(timeout_s=30)
    train(out, epochs=3, kill=(1, 2))
    return {}


# ---- the shared training loop (resid.training.fit) under DDP -------------------------------
FIT_SAMPLES = 43  # global batch 8 -> last step has 3 rows: ranks get 2 and 1 (loss weights 4/3, 2/3)


class TinyReg(torch.nn.Module):
    """A model with resid's training interface (``loss(batch)``) and a deterministic loss."""

    def __init__(self, kill_rank1_at_call: int | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.calls, self.kill_at = 0, kill_rank1_at_call

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at and D.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # a rank dies mid-epoch
        return torch.nn.functional.mse_loss(self.net(batch[:, :5]), batch[:, 5:])


def fit_samples() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(FIT_SAMPLES, 5, generator=g)
    return torch.cat([x, x[:, :2].sum(1, keepdim=True).sin()], dim=1)


def run_fit(out: Path, resume: bool = False, kill_at: int | None = None, crash_epoch: int | None = None):
    """resid.training.fit for 4 epochs; returns (result, final weights). ``crash_epoch``: the
    evaluation of that epoch raises (a crash after the previous epoch's checkpoint)."""
    from resid import training

    torch.manual_seed(11 + 100 * D.get_rank())  # ranks initialise differently; DDP syncs to rank 0
    model = TinyReg(kill_at)
    samples = fit_samples()
    seen = {"epoch": 0}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        seen["epoch"] += 1
        if crash_epoch is not None and seen["epoch"] == crash_epoch:
            raise RuntimeError("simulated crash")
        with torch.no_grad():
            return {"valid/neg_mse": -float(m.loss(samples))}

    cfg = training.TrainConfig(epochs=4, batch_size=8, lr=1e-2, patience=10, metric="valid/neg_mse", progress=False)
    res = training.fit(model, samples, evaluate, cfg, out, {"model": "tiny"}, {"data": "fit_samples"}, resume=resume)
    return res, {k: v.detach().clone() for k, v in model.state_dict().items()}


def log_checkpoint_writes(log_dir: Path) -> None:
    """Wrap resid.training.save_checkpoint to record which rank wrote what."""
    from resid import training

    orig = training.save_checkpoint

    def logged(target, *args, **kwargs):
        with open(log_dir / f"ckpt_writes.rank{D.get_rank()}", "a") as f:
            f.write(f"{Path(target).name}\n")
        return orig(target, *args, **kwargs)

    training.save_checkpoint = logged


def famae_config():
    from resid.famae import FAMAEConfig

    return FAMAEConfig(d=16, layers=1, heads=2, ffn=32, dropout=0.0, max_len=8, batch_size=64, epochs=3,
                       patience=5, eval_batch_size=32, progress=False)


def scenario_fit(out: Path) -> dict:
    D.init()
    log_checkpoint_writes(out)
    res, weights = run_fit(out / "fresh")
    rres, rweights = run_fit(out / "from_single", resume=True)  # holds a single-process epoch-2 checkpoint
    from resid.famae import FAMAE
    sys.path.insert(0, str(Path(__file__).parent))
    from synth_seq import make_dataset

    ds = make_dataset()
    fam = FAMAE(famae_config())
    fres = fam.fit(ds, out / "famae")
    test_metrics = fam.evaluate(ds, "test")  # collective: every rank evaluates its block of users
    return {
        "history": res.history, "weights": {k: v.tolist() for k, v in weights.items()},
        "resumed_history": rres.history, "resumed_weights": {k: v.tolist() for k, v in rweights.items()},
        f"famae_history_rank{D.get_rank()}": fres.history, "famae_test": test_metrics,
        "famae_history_all": [h for h in _gather_objects(fres.history)], "famae_test_all": _gather_objects(test_metrics),
    }


def _gather_objects(obj):
    if not D.is_distributed():
        return [obj]
    out = [None] * D.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def scenario_fit_kill(out: Path) -> dict:
    D.init(timeout_s=30)
    steps = -(-FIT_SAMPLES // 8)
    run_fit(out / "run", kill_at=2 * (steps + 1) + 3)  # rank 1 dies at step 3 of epoch 3 (+1 loss call per eval)
    return {}


# ---- sharded GAOQ ---------------------------------------------------------------------------
GAOQ_CASES = {"two_levels": {"branching": (4, 3)}, "three_levels": {"branching": (3, 3, 2), "anchors": (4, 2)},
              "sampled": {"branching": (4, 3), "level1_sample": 200, "chunk_rows": 90}}


def gaoq_embeddings(n: int = 500, d: int = 8) -> np.ndarray:
    g = np.random.default_rng(4)
    centers = g.normal(size=(6, d)) * 3
    return (centers[g.integers(0, 6, n)] + g.normal(size=(n, d))).astype(np.float32)


def scenario_gaoq(out: Path) -> dict:
    from resid.gaoq_dist import fit_sharded

    D.init()
    z = np.load(out / "z.npy", mmap_mode="r")  # every rank maps the same file
    res = {}
    for name, kw in GAOQ_CASES.items():
        gq = fit_sharded(z, seed=3, iters=5, **kw)
        res[name] = {"codes": gq.codes.tolist(), "centroids": [c.tolist() for c in gq.tree.centroids],
                     "assign": gq.assign(np.asarray(z[:50])).tolist()}
    D.rank0_write(out / "result.json", lambda tmp: tmp.write_text(json.dumps(res)))
    # The CLI on the same process group (it leaves the group when done, so it runs last).
    from resid.cli import main

    rc = main(["quantize", str(out / "emb"), str(out / "q"), "--branching", "4,3", "--iters", "5", "--seed", "3", "--distributed"])
    if rc:
        raise SystemExit(rc)
    return {}


# ---- generator training and batched recommendation -----------------------------------------
def generator_setup():
    """Tiny generator problem: 12 items on a cycle, 3-level SIDs, global batch 7 (odd: the
    ranks get 4 and 3 rows, loss weights 8/7 and 6/7)."""
    from generator_reference import synthetic_dataset
    from resid.generator import GeneratorConfig
    from test_decode import random_sids

    n = 12
    sids = random_sids(n, [3, 3, 3], seed=0)
    starts = np.random.default_rng(0).permutation(n)[:12] % n
    ds = synthetic_dataset([[(int(s) + t) % n for t in range(7)] for s in starts], n)
    cfg = GeneratorConfig(d_model=16, d_ff=32, num_heads=2, d_kv=8, encoder_layers=2, decoder_layers=2,
                          codes_per_level=[3, 3, 3], dropout=0.0, batch_size=7, epochs=2, patience=100, beam=8,
                          lr=5e-3, max_history=5)
    return ds, sids, cfg


def scenario_generator(out: Path) -> dict:
    from resid.generator_train import load_checkpoint, train
    from resid.recommender import Recommender

    sys.path.insert(0, str(Path(__file__).parent))
    D.init()
    ds, sids, cfg = generator_setup()
    fresh = train(ds, sids, out / "fresh", cfg, progress=False)
    resumed = train(ds, sids, out / "from_single", cfg, resume=True, progress=False)
    model, _ = load_checkpoint(out / "fresh")
    hist = ds.train_samples(max_len=6)[:, :-1]
    items, scores = Recommender(model, sids, beam=8, batch_size=5).recommend_rows(hist, k=4)
    res = {"fresh": fresh["history"], "resumed": resumed["history"], "items": items.tolist(), "scores": scores.tolist()}
    D.rank0_write(out / "result.json", lambda tmp: tmp.write_text(json.dumps(res)))
    # `resid evaluate --distributed` on the same group (the CLI leaves the group, so it runs last).
    from resid.cli import main

    rc = main(["evaluate", str(out / "ds"), str(out / "sids.parquet"), str(out / "fresh"), "--beam", "8",
               "--batch-size", "3", "--quiet", "--distributed"])
    if rc:
        raise SystemExit(rc)
    return {}


# ---- a resid command through the CLI, logging which rank finishes which file ---------------
def scenario_cli(out: Path) -> dict:
    """``resid.cli.main(sys.argv[3:])`` (e.g. ``run ... --distributed``) with every rename, the
    way resid finishes each file and folder (``resid.io.atomic_write``, ``RunDir``), appended
    to OUT/renames.rank{R}: which rank wrote what, and how often."""
    log = out / f"renames.rank{os.environ['RANK']}"

    def logged(orig):
        def rename(src, dst, *args, **kwargs):
            orig(src, dst, *args, **kwargs)
            with open(log, "a") as f:
                f.write(f"{os.fspath(dst)}\n")

        return rename

    os.replace, os.rename = logged(os.replace), logged(os.rename)
    from resid.cli import main

    raise SystemExit(main(sys.argv[3:]))


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    result = {"main": scenario_main, "mismatch": scenario_mismatch, "kill": scenario_kill,
              "fit": scenario_fit, "fit_kill": scenario_fit_kill, "gaoq": scenario_gaoq,
              "generator": scenario_generator, "cli": scenario_cli}[scenario](out_dir)
    if result:
        D.rank0_write(out_dir / "result.json", lambda tmp: tmp.write_text(json.dumps(result)))
    D.shutdown()
    D.exit_worker(0)  # as the CLI does: no interpreter finalization under torchrun
