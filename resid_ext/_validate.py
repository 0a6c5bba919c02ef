"""The one validation layer. Every function in resid_ext calls these first; csrc/ trusts
its inputs. Messages start with the public function's name and name the argument."""
from __future__ import annotations

from typing import Sequence

import torch


def check_tensor(t: object, name: str, fn: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_dtype(t: torch.Tensor, name: str, allowed: Sequence[torch.dtype], fn: str) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{fn}: {name} must have dtype {names}, got {str(t.dtype).replace('torch.', '')}")


def check_ndim(t: torch.Tensor, name: str, ndim: int, fn: str, shape_hint: str = "") -> None:
    if t.dim() != ndim:
        hint = f" {shape_hint}" if shape_hint else ""
        raise ValueError(f"{fn}: {name} must be {ndim}-D{hint}, got shape {list(t.shape)}")


def check_shape(t: torch.Tensor, name: str, expected: tuple[int, ...], fn: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{fn}: {name} must have shape {list(expected)}, got {list(t.shape)}")


def check_same_device(fn: str, **tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{fn}: all tensors must be on one device, got {listing}")
    return first


def check_finite(t: torch.Tensor, name: str, fn: str) -> None:
    """Reject NaN/inf, naming the first bad row so the user can find it."""
    if bool(torch.isfinite(t).all()):  # the common case: one pass, one bool temporary
        return
    bad = ~torch.isfinite(t)
    idx = torch.nonzero(bad)[0].tolist()
    count = int(bad.sum())
    raise ValueError(f"{fn}: {name} has {count} non-finite value(s) (NaN/inf), first at index {idx}")
