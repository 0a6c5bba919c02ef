"""Multi-process / multi-machine support on ``torch.distributed`` (launched by ``torchrun``).

resid does not ship its own launcher: ``torchrun`` starts one process per GPU (or per CPU
worker) and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`init`
detects that environment (or is told to by ``--distributed``), joins the process group (NCCL on
CUDA, gloo on CPU) and pins each process to its local GPU. Everything here also works with no
process group at all (a plain single process is world size 1), so the training code calls the
same helpers either way.

What the helpers guarantee:
- :func:`shard_indices` — the epoch's seeded permutation split across ranks *strided*, padded
  to equal length like ``DistributedSampler``. With per-rank batch ``B``, step ``i`` of all ranks
  together covers exactly ``perm[i*B*W : (i+1)*B*W]``, i.e. the single-process global batch
  ``B*W`` of the same seed, so DDP (which averages gradients) follows the single-process run.
- :func:`shard_range` / :func:`gather_concat` — contiguous, unpadded blocks for evaluation;
  concatenating the gathered blocks in rank order restores the global order exactly.
- :func:`gather_by_index` — variable-length results written back to their global positions.
- :func:`check_config` — every rank hashes its config; a mismatch raises on every rank, naming
  the ranks and the keys that differ.
- :func:`rank0_write` — only rank 0 writes (atomically); the others wait at a barrier, so
  nobody reads a half-written checkpoint.
- :func:`on_rank0` — rank 0 does something (writes, decides) and every rank gets its result,
  or raises its exception, so all ranks take the same path.
- :func:`report_failure` + the failure watchdog :func:`init` starts — an exception on one rank
  stops every rank within about a second, each naming the failing rank and its error, instead
  of leaving them blocked until the process-group timeout.
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .io import atomic_write

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands. ``world_size == 1`` and ``enabled == False`` for a plain run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - torch.device is immutable
    backend: str | None = None
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_is_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when launched by torchrun (or any launcher setting RANK and WORLD_SIZE)."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def _env_int(env: dict[str, str] | os._Environ[str], name: str) -> int:
    raw = env.get(name)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"distributed: environment variable {name} must be an integer, got {raw!r}") from None


def init(
    distributed: bool | None = None,
    device: str | torch.device | None = None,
    timeout_s: float = 1800.0,
) -> DistContext:
    """Join the process group if this is a distributed run; return this process's context.

    distributed: True (``--distributed``) requires a torchrun environment; None auto-detects
        it; False forces a single process even under torchrun (then only sensible with 1 rank).
    device: "cpu" forces gloo on CPU; "cuda"/None uses cuda:LOCAL_RANK with NCCL when CUDA is
        available, else gloo on CPU.
    timeout_s: how long a collective waits for a missing rank before failing (a dead rank
        then surfaces as an error on the others instead of a hang).
    Idempotent: a second call returns the context of the existing process group."""
    env = os.environ
    if device is not None and not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"distributed: device must be 'cpu' or 'cuda[:i]', got {device!r}") from None
    if dist.is_available() and dist.is_initialized():
        return current()
    want = env_is_torchrun() if distributed is None else distributed
    if not want:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return DistContext(device=dev)
    if not dist.is_available():
        raise RuntimeError("distributed: this torch build has no torch.distributed support")
    missing = [v for v in ENV_VARS if v not in env and v != "LOCAL_RANK"]
    if missing:
        raise RuntimeError(
            f"distributed: --distributed needs a torchrun environment, but {', '.join(missing)} "
            "is not set; launch with `torchrun --nproc-per-node N -m resid ...`"
        )
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"distributed: RANK={rank} must be in [0, WORLD_SIZE={world})")
    want_cuda = (device is None and torch.cuda.is_available()) or (device is not None and torch.device(device).type == "cuda")
    if want_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("distributed: device cuda requested but CUDA is not available; use --device cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"distributed: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "use --nproc-per-node <= the number of GPUs"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = DistContext(rank, world, local_rank, dev, backend, True)
    global _CTX
    _CTX = ctx
    if world > 1:
        _start_watchdog()
    return ctx


_CTX: DistContext | None = None


def current() -> DistContext:
    """The context of this process: the one :func:`init` made, or a single-process one."""
    if _CTX is not None and dist.is_initialized():
        return _CTX
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dev, backend, True)
    return DistContext()


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (no-op when not distributed). ``barrier``: wait until every rank
    gets here first (a rank destroying gloo's pairs while another is still in a collective
    aborts with "terminate called"); pass False when leaving on an error, where the other
    ranks may never arrive."""
    global _CTX
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()  # still watched: a rank failing now stops this one too
        _stop_watchdog()  # before the group (and its store) goes away
        dist.destroy_process_group()
    _stop_watchdog()
    _CTX = None


def exit_worker(code: int) -> NoReturn:
    """End a torchrun worker now, after :func:`shutdown`, skipping interpreter finalization.

    Objects freed during finalization (DDP reducers, pending gloo work) can still own gloo's C++
    worker threads; destroying them there sometimes hits a joinable std::thread and aborts the
    process ("terminate called without an active exception", SIGABRT) after its work is done,
    which torchrun reports as a failed launch (about 1 launch in 12 of a two-rank CLI test on
    this 2-core machine; see pytorch/pytorch#179291). Every file resid writes is complete and
    renamed by the time a command returns, so only stdio and logging need flushing."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_distributed() -> bool:
    return get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints reports."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Tensors passed to collectives must live on the backend's device (CUDA for NCCL)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---- rank-0 writes -------------------------------------------------------------------------
def rank0_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Rank 0 writes ``path`` atomically (``write(tmp_path)`` then rename); every rank then
    meets at a barrier, so after return the file is complete for all of them."""
    target = Path(path)
    if is_main():
        atomic_write(target, write)
    barrier()
    return target


def rank0_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run ``fn`` on rank 0 only (others return None), then barrier on all ranks."""

    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        out = fn(*args, **kwargs) if is_main() else None
        barrier()
        return out

    wrapped.__name__ = getattr(fn, "__name__", "rank0_only")
    wrapped.__doc__ = fn.__doc__
    return wrapped


# ---- sharding ------------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global order, identical on every rank and world size: [n] int64."""
    g = torch.Generator()
    g.manual_seed(int(seed) + int(epoch))
    return torch.randperm(int(n), generator=g).numpy().astype(np.int64)


def shard_indices(
    n: int,
    epoch: int,
    seed: int,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> np.ndarray:
    """This rank's sample indices for an epoch, [ceil(n / W)] int64 (or [n // W] with drop_last).

    The global order (seeded permutation, or 0..n-1 without shuffle) is padded by wrapping
    around to a multiple of W, then rank r takes positions r, r+W, r+2W, ... (as
    ``DistributedSampler`` does). Every index appears at least once across ranks; at most
    W-1 are repeated. Strided (not blocked) so that batch i of all ranks together is batch i
    of the single-process run with global batch B*W."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if n < 0:
        raise ValueError(f"shard_indices: n must be >= 0, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_indices: rank {rank} must be in [0, world_size={world_size})")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int64)
    if drop_last:
        total = (n // world_size) * world_size
        order = order[:total]
    else:
        total = -(-n // world_size) * world_size
        if total > n:
            if n == 0:
                return np.zeros(0, dtype=np.int64)
            reps = -(-(total - n) // n)
            order = np.concatenate([order, np.tile(order, reps)[: total - n]])
    return order[rank:total:world_size]


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Contiguous, unpadded block [start, stop) of 0..n-1 for this rank (sizes differ by at most
    one). For evaluation: no item is seen twice, and :func:`gather_concat` restores order."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range: rank {rank} must be in [0, world_size={world_size})")
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# ---- gathers -------------------------------------------------------------------------------
def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def all_gather_varlen(x: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
    """Gather each rank's ``x`` ([n_r, ...], same trailing shape and dtype everywhere, n_r may
    differ, 0 allowed) to every rank -> list of W tensors on CPU, in rank order."""
    t = _as_tensor(x)
    if not is_distributed():
        return [t.cpu()]
    dev = _comm_device()
    world = get_world_size()
    # Exchange lengths, then pad every block to the longest (collectives need equal shapes).
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    lens = [int(s.item()) for s in sizes]
    # Trailing shapes and dtypes must agree; check them cheaply with the config-hash machinery.
    meta = [None] * world
    dist.all_gather_object(meta, (tuple(t.shape[1:]), str(t.dtype)))
    if any(m != meta[0] for m in meta):
        raise ValueError(f"all_gather_varlen: ranks disagree on trailing shape/dtype: {meta}")
    longest = max(lens)
    buf = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    buf[: t.shape[0]] = t.to(dev)
    out = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(out, buf)
    return [o[:k].cpu() for o, k in zip(out, lens)]


def gather_concat(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Concatenate every rank's block in rank order ([sum n_r, ...] on CPU). With blocks from
    :func:`shard_range` this is the single-process array, in the single-process order."""
    return torch.cat(all_gather_varlen(x), dim=0)


def gather_by_index(values: torch.Tensor | np.ndarray, index: torch.Tensor | np.ndarray, total: int) -> torch.Tensor:
    """Place every rank's results at their global positions.

    values: [n_r, ...] this rank's results; index: [n_r] int64 their global positions in
    [0, total) (e.g. from :func:`shard_indices`; padded duplicates must carry equal values).
    Returns [total, ...] on CPU on every rank; raises if some position got no value."""
    v, idx = _as_tensor(values), _as_tensor(index).to(torch.int64)
    if idx.ndim != 1 or idx.shape[0] != v.shape[0]:
        raise ValueError(f"gather_by_index: index must have shape [{v.shape[0]}] to match values, got {list(idx.shape)}")
    all_v, all_i = torch.cat(all_gather_varlen(v)), torch.cat(all_gather_varlen(idx))
    if all_i.numel() and (int(all_i.min()) < 0 or int(all_i.max()) >= total):
        raise ValueError(f"gather_by_index: index values must be in [0, {total}), got [{int(all_i.min())}, {int(all_i.max())}]")
    out = torch.zeros((total, *v.shape[1:]), dtype=v.dtype)
    seen = torch.zeros(total, dtype=torch.bool)
    out[all_i] = all_v
    seen[all_i] = True
    if not bool(seen.all()):
        raise ValueError(f"gather_by_index: {int((~seen).sum())} of {total} positions received no value")
    return out


def all_reduce_sum(x: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """Sum over ranks (float64 on CPU for exact-enough metric sums); identity in one process."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    if not is_distributed():
        return t.clone()
    buf = t.to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; identity in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def on_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn()`` on rank 0 only and return its (picklable) result on every rank; the others
    wait meanwhile. If ``fn`` raises an Exception, every rank raises it (the same type and
    message), marked as raised everywhere so that :func:`report_failure` does not treat it as
    one rank's failure. For rank-0 writes followed by reads elsewhere (the return is also a
    barrier), and for decisions every rank must share (skip a stage or not). ``fn`` must not
    use collectives (only rank 0 runs it). One process: ``fn()``."""
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - handed to every rank, re-raised below
            error = e
            outcome = ("error", _portable_exception(e))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        exc = error if error is not None else outcome[1]
        exc.resid_everywhere = True
        raise exc
    return outcome[1]


def _portable_exception(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        return pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001 - any pickling problem: fall back to the message
        return RuntimeError(f"{type(e).__name__}: {e}")


# ---- failures: an exception on one rank stops every rank -----------------------------------
# Why not a collective: a rank that raises cannot tell the others through one, because they may
# be blocked inside a collective it will never join (a DDP gradient all-reduce, a barrier, a
# gather), and gloo/NCCL collectives cannot be interrupted from Python. A short monitored
# barrier (gloo only) or an error-flag all-reduce at stage ends has the same problem. So the
# failure travels out of band, through the process group's key-value store (the TCPStore that
# torchrun hosts; the same object for gloo and NCCL):
# - the failing rank (the CLI calls report_failure for any exception or non-zero exit) writes
#   "rank R failed in <phase>: <Type>: <message>" under a key and counts itself;
# - every rank runs a daemon thread (started by init) that polls the count every
#   FAILURE_POLL_S; on a failure it prints "rank S stopping: rank R failed ...", acknowledges,
#   and FAILURE_GRACE_S later ends the process with exit code 1 (os._exit: the main thread may
#   be stuck in C++ and cannot be unwound). That is safe because resid writes every file
#   atomically (temporary name, then rename) and keeps partial stage folders for resume;
# - the failing rank waits (at most FAILURE_ACK_S) until every other rank has acknowledged or
#   failed itself, so that each prints its message, then exits (code 1) within the grace
#   period: torchrun reports it as the root cause and stops the remaining local workers.
# A rank that dies without reporting (SIGKILL, out of memory) is still only noticed by torchrun
# (which stops the other local workers) or, across machines, by the process-group timeout.
FAILURE_POLL_S = 0.25
FAILURE_ACK_S = 15.0
FAILURE_GRACE_S = 2.0

_WATCHDOG: tuple[threading.Thread, threading.Event] | None = None
_PHASE: list[str] = []
_REPORTED = False
_PEER_FAILURE: str | None = None


def _failure_keys() -> str:
    """Key prefix, unique per torchrun restart (a restarted group must not see old failures)."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return f"resid/failure/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def _store() -> Any:
    # The default group's store (a PrefixStore over torchrun's TCPStore). Private in
    # torch.distributed but stable since torch 1.x; the TCPStore client serialises its own
    # requests, so polling it from the watchdog thread is safe.
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _failures(store: Any, prefix: str, world: int) -> list[str]:
    return [store.get(f"{prefix}rank{r}").decode() for r in range(world) if store.check([f"{prefix}rank{r}"])]


def _watch(stop: threading.Event, store: Any, rank: int, world: int) -> None:
    prefix = _failure_keys()
    while not stop.wait(FAILURE_POLL_S):
        try:
            if store.add(f"{prefix}count", 0) == 0:
                continue
            failures = _failures(store, prefix, world)
        except Exception:  # noqa: BLE001 - the store is gone: the group is being torn down
            return
        if stop.is_set():  # this rank is reporting its own failure or leaving the group
            return
        global _PEER_FAILURE
        _PEER_FAILURE = "; ".join(failures)
        print(f"resid: rank {rank} stopping: " + ("; ".join(failures) or "another rank failed"), file=sys.stderr, flush=True)
        try:
            store.add(f"{prefix}acks", 1)
            time.sleep(FAILURE_GRACE_S)  # let the failing rank exit first: torchrun then names it as the root cause
        finally:
            os._exit(1)


def _start_watchdog() -> None:
    global _WATCHDOG, _REPORTED, _PEER_FAILURE
    if _WATCHDOG is not None:
        return
    stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(stop, _store(), get_rank(), get_world_size()),
                              name="resid-failure-watchdog", daemon=True)
    thread.start()
    _WATCHDOG, _REPORTED, _PEER_FAILURE = (thread, stop), False, None


def _stop_watchdog() -> None:
    global _WATCHDOG
    if _WATCHDOG is not None:
        thread, stop = _WATCHDOG
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout=5 * FAILURE_POLL_S)
        _WATCHDOG = None


atexit.register(_stop_watchdog)


def peer_failure() -> str | None:
    """The failure of another rank this one has been told about (then this process is about to
    exit, and errors it raises meanwhile, e.g. "connection closed" in a collective, are only
    consequences), else None."""
    return _PEER_FAILURE


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Label the work inside (e.g. "stage famae"): a failure raised there is reported to the
    other ranks as "rank R failed in stage famae: ..."."""
    _PHASE.append(name)
    try:
        yield
    except BaseException as e:
        if not hasattr(e, "resid_phase"):
            e.resid_phase = name  # type: ignore[attr-defined]
        raise
    finally:
        _PHASE.pop()


def report_failure(error: BaseException | str) -> None:
    """Tell the other ranks that this one failed (no-op in one process, or when ``error`` was
    raised on every rank by :func:`on_rank0`): they print the message below and exit with
    code 1. Waits at most FAILURE_ACK_S for them to acknowledge. Call once, on the way out."""
    global _REPORTED
    if _REPORTED or not is_distributed() or getattr(error, "resid_everywhere", False):
        return
    _REPORTED = True
    _stop_watchdog()  # this rank exits through its own error path, not the watchdog
    rank, world = get_rank(), get_world_size()
    where = getattr(error, "resid_phase", None) or (_PHASE[-1] if _PHASE else None)
    what = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    msg = f"rank {rank} failed" + (f" in {where}" if where else "") + f": {what}"
    try:
        store, prefix = _store(), _failure_keys()
        store.set(f"{prefix}rank{rank}", msg)
        store.add(f"{prefix}count", 1)
        deadline = time.monotonic() + FAILURE_ACK_S
        while time.monotonic() < deadline:
            if store.add(f"{prefix}acks", 0) + store.add(f"{prefix}count", 0) >= world:
                break
            time.sleep(0.05)
    except Exception as e:  # noqa: BLE001 - store unreachable: torchrun / the timeout stop the others
        print(f"resid: rank {rank}: could not tell the other ranks about the failure ({e})", file=sys.stderr)


# ---- config consistency --------------------------------------------------------------------
def _canonical(config: Any) -> str:
    return json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """sha256 of the config's canonical JSON (sorted keys; non-JSON values via ``str``)."""
    return hashlib.sha256(_canonical(config).encode()).hexdigest()


def check_config(config: dict[str, Any], what: str = "config") -> str:
    """All ranks must run with the same ``config``; call once at start, on every rank.

    Gathers every rank's hash; on a mismatch raises RuntimeError on every rank, naming the
    groups of ranks that agree and the keys whose values differ. Returns the hash."""
    h = config_hash(config)
    if not is_distributed():
        return h
    world = get_world_size()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (h, json.loads(_canonical(config))))
    hashes = [g[0] for g in gathered]
    if len(set(hashes)) == 1:
        return h
    groups: dict[str, list[int]] = {}
    for r, gh in enumerate(hashes):
        groups.setdefault(gh, []).append(r)
    ref = gathered[0][1]
    diff_keys: set[str] = set()
    for _, cfg in gathered[1:]:
        if isinstance(ref, dict) and isinstance(cfg, dict):
            diff_keys |= {k for k in set(ref) | set(cfg) if ref.get(k, "<missing>") != cfg.get(k, "<missing>")}
    details = "; ".join(
        f"{k}: " + ", ".join(f"rank {r}={gathered[r][1].get(k, '<missing>') if isinstance(gathered[r][1], dict) else '?'}" for r in range(world))
        for k in sorted(diff_keys)
    )
    group_txt = " vs ".join("ranks " + ",".join(map(str, rs)) for rs in groups.values())
    raise RuntimeError(f"distributed: {what} differs across ranks ({group_txt}); differing keys -> {details}")


# ---- models --------------------------------------------------------------------------------
def wrap_ddp(model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
    """DistributedDataParallel(model) when distributed (model already on this rank's device),
    else ``model`` unchanged. DDP broadcasts rank 0's parameters at construction, so every
    rank starts from the same weights even if they were initialised differently."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(model.parameters()).device
    if dev.type == "cuda":
        return DDP(model, device_ids=[dev.index], output_device=dev.index, **ddp_kwargs)
    return DDP(model, **ddp_kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under a DDP wrapper (for state_dict, eval, checkpoints)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def per_rank_batch(global_batch: int, world_size: int | None = None) -> int:
    """Per-rank batch for a global batch; the global batch must split evenly across ranks so
    that the run matches the single-process one."""
    world_size = get_world_size() if world_size is None else world_size
    if global_batch < world_size or global_batch % world_size:
        raise ValueError(
            f"distributed: batch size {global_batch} must be a positive multiple of the world size {world_size} "
            "(the batch size is global: each rank takes batch_size / world_size)"
        )
    return global_batch // world_size


# ---- hooks used by the shared training loop (resid.training.fit) ---------------------------
class LossForward(torch.nn.Module):
    """Adapter so DDP can wrap a model whose training entry point is ``loss(batch)`` rather than
    ``forward``: DDP only synchronises gradients for work done inside its ``forward``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inner.loss(*args, **kwargs)


def wrap_ddp_loss(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``batch -> loss`` that all-reduces gradients under DDP, else plain ``model.loss``.
    Buffers are not re-broadcast every step (``broadcast_buffers=False``): resid models keep
    only dataset-derived constants there (item features, proposals), equal on every rank."""
    if not is_distributed():
        return model.loss
    return wrap_ddp(LossForward(model), broadcast_buffers=False)


def local_batch(global_idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's part of a global mini-batch of sample positions, and the loss weight that
    makes DDP's gradient *average* equal the gradient of the global-batch mean loss.

    global_idx: [B] (the single-process batch). Rank r takes global_idx[r::W] (n_r rows); with
    a per-rank mean loss L_r, DDP computes (1/W) sum_r grad(w_r L_r), so w_r = n_r W / B.
    A rank left with no rows (B < W on the last step) reuses row 0 with weight 0, so it still
    joins the gradient all-reduce. One process: (global_idx, 1.0) unchanged."""
    world = get_world_size()
    if world == 1:
        return global_idx, 1.0
    part = global_idx[get_rank() :: world]
    if len(part) == 0:
        return global_idx[:1], 0.0
    return part, len(part) * world / len(global_idx)


def rank_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """Seed of rank > 0's global torch RNG for an epoch (masks, dropout differ across ranks;
    re-seeded per epoch so a resumed run is deterministic on every rank)."""
    rank = get_rank() if rank is None else rank
    return (int(seed) * 1_000_003 + int(rank) * 7919 + int(epoch)) % (2**63)


def training_device(device: str) -> torch.device:
    """The device a training process uses: this rank's GPU under a distributed CUDA run,
    else ``device`` itself."""
    ctx = current()
    if ctx.enabled and ctx.device.type == "cuda":
        return ctx.device
    return torch.device(device)


def init_for_cli(distributed: bool, device: str) -> str:
    """CLI entry hook: join the torchrun group (``--distributed`` makes it mandatory, else it is
    auto-detected) and return the device this rank should use ("cuda" -> "cuda:LOCAL_RANK")."""
    init(distributed=True if distributed else None, device=device)
    return str(training_device(device)) if is_distributed() else device


def add_cli_flag(parser: Any) -> None:
    """``--distributed`` for a subcommand's argparse parser."""
    parser.add_argument("--distributed", action="store_true",
                        help="run across the processes torchrun started (auto-detected under torchrun); "
                             "work is split across ranks, rank 0 writes files and prints the report")
