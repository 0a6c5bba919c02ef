"""The shared training loop: early stopping, best/last checkpoints, exact resume, NaN stop."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from resid.training import TrainConfig, TrainingDiverged, _lr_lambda, fit


class Toy(nn.Module):
    """Linear regression with dropout (so the RNG state matters for resume)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.2)
        self.calls = 0
        self.fail_at: int | None = None  # raise/NaN at this loss call (1-based)
        self.fail_with = "nan"

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = ((self.lin(self.drop(batch[:, :4])).squeeze(1) - batch[:, 4]) ** 2).mean()
        if self.fail_at is not None and self.calls >= self.fail_at:
            if self.fail_with == "nan":
                return out * float("nan")
            raise KeyboardInterrupt  # a crash mid-epoch
        return out


def data(m: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(m, generator=g)
    return torch.cat([x, y[:, None]], dim=1)


def neg_mse(model: nn.Module) -> dict[str, float]:
    d = data(32)
    return {"valid/score": -float(((model.lin(d[:, :4]).squeeze(1) - d[:, 4]) ** 2).mean())}


CFG = dict(batch_size=16, lr=0.05, metric="valid/score", progress=False)
FP = {"what": "toy"}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_early_stopping_keeps_best_epoch(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.29, 0.9]  # best at epoch 2, then 3 epochs without improvement
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(model: nn.Module) -> dict[str, float]:
        seen[len(seen) + 1] = state(model)
        return {"valid/score": scores[len(seen) - 1]}

    model = Toy()
    res = fit(model, data(), scripted, TrainConfig(epochs=10, patience=3, **CFG), tmp_path, {}, FP)
    assert (res.best_epoch, res.epochs_run, res.stopped_early) == (2, 5, True)
    assert res.best_score == 0.3 and [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5]
    for k, v in state(model).items():  # the model returned holds epoch 2's weights
        torch.testing.assert_close(v, seen[2][k], rtol=0, atol=0)
    assert json.loads((tmp_path / "best" / "config.json").read_text())["epoch"] == 2
    assert json.loads((tmp_path / "last" / "config.json").read_text())["epoch"] == 5


def test_resume_continues_identically(tmp_path):
    cfg = TrainConfig(epochs=6, patience=10, **CFG)
    full = Toy()
    ref = fit(full, data(), neg_mse, cfg, tmp_path / "a", {}, FP)

    broken = Toy()
    broken.fail_at, broken.fail_with = 4 * 3 + 2, "raise"  # 4 steps/epoch: dies inside epoch 4
    with pytest.raises(KeyboardInterrupt):
        fit(broken, data(), neg_mse, cfg, tmp_path / "b", {}, FP)
    assert json.loads((tmp_path / "b" / "last" / "config.json").read_text())["epoch"] == 3
    resumed = Toy()  # a fresh process: new object, state only from disk
    torch.manual_seed(123)  # whatever the global RNG holds now must not matter
    res = fit(resumed, data(), neg_mse, cfg, tmp_path / "b", {}, FP, resume=True)
    assert res.history == ref.history
    for k, v in state(full).items():
        torch.testing.assert_close(state(resumed)[k], v, rtol=0, atol=0)


def test_same_seed_same_run_other_seed_differs(tmp_path):
    a, b, c = Toy(), Toy(), Toy()
    ha = fit(a, data(), neg_mse, TrainConfig(epochs=3, **CFG), tmp_path / "a", {}, FP).history
    hb = fit(b, data(), neg_mse, TrainConfig(epochs=3, **CFG), tmp_path / "b", {}, FP).history
    hc = fit(c, data(), neg_mse, TrainConfig(epochs=3, seed=7, **CFG), tmp_path / "c", {}, FP).history
    assert ha == hb and ha != hc


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = Toy()
    model.fail_at = 2 * 4 + 3  # NaN in epoch 3
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 3, step 3.*epoch 2"):
        fit(model, data(), neg_mse, TrainConfig(epochs=5, patience=5, **CFG), tmp_path, {}, FP)
    last = json.loads((tmp_path / "last" / "config.json").read_text())
    assert last["epoch"] == 2 and math.isfinite(last["metrics"]["loss"])
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_refuses_to_overwrite_and_checks_fingerprint(tmp_path):
    fit(Toy(), data(), neg_mse, TrainConfig(epochs=1, **CFG), tmp_path, {}, FP)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        fit(Toy(), data(), neg_mse, TrainConfig(epochs=2, **CFG), tmp_path, {}, FP)
    with pytest.raises(ValueError, match=r"another dataset or model config \(what: checkpoint has 'toy', this run has 'other'"):
        fit(Toy(), data(), neg_mse, TrainConfig(epochs=2, **CFG), tmp_path, {}, {"what": "other"}, resume=True)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no training samples"):
        fit(Toy(), data()[:0], neg_mse, TrainConfig(**CFG), tmp_path, {}, FP)
    with pytest.raises(ValueError, match="evaluate\\(\\) returned no 'valid/other'"):
        fit(Toy(), data(), neg_mse, TrainConfig(epochs=1, **{**CFG, "metric": "valid/other"}), tmp_path, {}, FP)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        fit(Toy(), data(), neg_mse, TrainConfig(**{**CFG, "batch_size": 0}), tmp_path / "x", {}, FP)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        fit(Toy(), data(), neg_mse, TrainConfig(**{**CFG, "device": "tpu"}), tmp_path / "y", {}, FP)


def test_cosine_schedule_with_warmup():
    f = _lr_lambda(warmup=4, total=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0) and f(100) == pytest.approx(0.0)
    assert _lr_lambda(0, 10)(0) == 1.0


def test_nan_metric_never_counts_as_best(tmp_path):
    nan_eval = lambda model: {"valid/score": float("nan")}  # noqa: E731
    with pytest.raises(RuntimeError, match="no epoch produced a finite valid/score"):
        fit(Toy(), data(), nan_eval, TrainConfig(epochs=5, patience=2, **CFG), tmp_path, {}, FP)
