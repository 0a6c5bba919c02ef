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


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    result = {"main": scenario_main, "mismatch": scenario_mismatch, "kill": scenario_kill}[scenario](out_dir)
    if result:
        D.rank0_write(out_dir / "result.json", lambda tmp: tmp.write_text(json.dumps(result)))
    D.shutdown()
