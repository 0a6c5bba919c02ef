"""Trie of semantic IDs and the fused trie-constrained beam step (CPU + CUDA).

``Trie(sids)`` builds the CSR trie in C++ (``csrc/beam/trie_cpu.cpp``); ``trie_beam_step``
validates its arguments once here, then calls the CPU (OpenMP) or CUDA twin
(``csrc/beam/trie_step_*``). Padded beams (rows with fewer than W valid continuations) have
score -inf and node, parent and code -1; a beam with score -inf is dead and never expands.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from resid_ext import _C, _device
from resid_ext._validate import check_dtype, check_ndim, check_shape, check_tensor

_CUDA_MAX_WIDTH = 1024  # shared-memory layout of trie_step_cuda.cu: one block of W slots per row


class BeamStep(NamedTuple):
    """One beam step's result, each [B, W], best first per row (padded slots at the end).

    scores: float32, -inf in padded slots. nodes: int64 trie node of each new beam.
    parents: int64 slot (in the previous step) each new beam extends. codes: int64 code taken.
    nodes, parents and codes are -1 in padded slots.
    """

    scores: torch.Tensor
    nodes: torch.Tensor
    parents: torch.Tensor
    codes: torch.Tensor


class Trie:
    """Trie of the valid semantic IDs, stored as CSR (node 0 = root, nodes numbered depth by depth).

    Tensors (int64, on ``self.device``): ``child_offsets`` [num_nodes + 1], ``child_tokens`` [E]
    (codes, ascending per node), ``child_nodes`` [E], ``leaf_items`` [num_nodes] (item row at
    depth-L nodes, -1 elsewhere). ``level_offsets`` (host list, L + 2 ints): nodes of depth d are
    ``range(level_offsets[d], level_offsets[d + 1])``. ``level_sizes`` (tuple of L ints): codes per
    level (max code + 1), i.e. the V that ``trie_beam_step`` needs at that level.
    """

    def __init__(self, sids: torch.Tensor) -> None:
        """sids: [N, L] int64 (or int32) codes >= 0 on any device; row i is item i's semantic ID.

        Rows must be distinct (ValueError naming two identical rows). The trie is built on the
        host and placed on ``sids.device``.
        """
        fn = "Trie"
        check_tensor(sids, "sids", fn)
        check_dtype(sids, "sids", (torch.int64, torch.int32), fn)
        check_ndim(sids, "sids", 2, fn, "[N, L]")
        n, depth = sids.shape
        if n < 1 or depth < 1:
            raise ValueError(f"{fn}: sids must have at least one row and one column, got shape {list(sids.shape)}")
        host = sids.detach().to("cpu", torch.int64).contiguous()
        neg = host < 0
        if bool(neg.any()):
            idx = torch.nonzero(neg)[0].tolist()
            raise ValueError(f"{fn}: sids must hold codes >= 0, got {int(host[idx[0], idx[1]])} at index {idx}")
        csr = _C.trie_build(host.data_ptr(), n, depth)
        t = {k: torch.from_numpy(v) for k, v in csr.items()}
        self._init(
            t["child_offsets"], t["child_tokens"], t["child_nodes"], t["leaf_items"],
            [int(x) for x in t["level_offsets"]], tuple(int(x) for x in t["level_sizes"]), n,
        )
        self._check_csr()
        if sids.device.type != "cpu":
            moved = self.to(sids.device)
            self.__dict__.update(moved.__dict__)

    def _init(self, child_offsets: torch.Tensor, child_tokens: torch.Tensor, child_nodes: torch.Tensor,
              leaf_items: torch.Tensor, level_offsets: list[int], level_sizes: tuple[int, ...],
              num_items: int) -> None:
        self.child_offsets = child_offsets
        self.child_tokens = child_tokens
        self.child_nodes = child_nodes
        self.leaf_items = leaf_items
        self.level_offsets = level_offsets
        self.level_sizes = level_sizes
        self._num_items = num_items

    def _check_csr(self) -> None:
        """Every CSR invariant, once, at construction (the beam step trusts the trie)."""
        lo = torch.tensor(self.level_offsets, dtype=torch.int64)
        _C.trie_check_csr(self.child_offsets.data_ptr(), self.child_tokens.data_ptr(),
                          self.child_nodes.data_ptr(), self.leaf_items.data_ptr(), lo.data_ptr(),
                          self.num_nodes, self.num_items, self.depth)

    @property
    def num_nodes(self) -> int:
        return len(self.leaf_items)

    @property
    def num_items(self) -> int:
        return self._num_items

    @property
    def depth(self) -> int:
        """L: codes per semantic ID (leaves are at depth L)."""
        return len(self.level_sizes)

    @property
    def device(self) -> torch.device:
        return self.child_offsets.device

    def node_depth(self, node: int) -> int:
        """Depth of one node id (0 = root, L = leaf)."""
        if not 0 <= node < self.num_nodes:
            raise ValueError(f"Trie.node_depth: node must be in [0, {self.num_nodes}), got {node}")
        d = 0
        while self.level_offsets[d + 1] <= node:
            d += 1
        return d

    def to(self, device: torch.device | str) -> "Trie":
        """A Trie with the same CSR on ``device`` (self when already there)."""
        device = torch.device(device)
        if device.type == "cuda":
            _device.require_cuda_kernels("Trie.to", device)
        if device == self.device:
            return self
        out = Trie.__new__(Trie)
        out._init(self.child_offsets.to(device), self.child_tokens.to(device), self.child_nodes.to(device),
                  self.leaf_items.to(device), self.level_offsets, self.level_sizes, self.num_items)
        return out

    def items(self, nodes: torch.Tensor) -> torch.Tensor:
        """Item rows of leaf nodes, -1 for inner nodes and for -1 (padded beams).

        nodes: int64, any shape, on the trie's device, values in [-1, num_nodes). Returns int64,
        same shape.
        """
        fn = "Trie.items"
        check_tensor(nodes, "nodes", fn)
        check_dtype(nodes, "nodes", (torch.int64,), fn)
        if nodes.device != self.device:
            raise ValueError(f"{fn}: nodes are on {nodes.device} but the trie is on {self.device}; use trie.to(device)")
        if nodes.numel():
            lo, hi = (int(x) for x in torch.stack([nodes.min(), nodes.max()]).tolist())
            if lo < -1 or hi >= self.num_nodes:
                bad = lo if lo < -1 else hi
                raise ValueError(f"{fn}: nodes must be in [-1, {self.num_nodes}), got {bad}")
        return torch.where(nodes >= 0, self.leaf_items[nodes.clamp(min=0)], torch.full_like(nodes, -1))

    def __repr__(self) -> str:
        return (f"Trie(num_items={self.num_items}, depth={self.depth}, num_nodes={self.num_nodes}, "
                f"level_sizes={list(self.level_sizes)}, device={self.device})")


def beam_start(batch: int, width: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (scores [B, W] float32, nodes [B, W] int64): one live root beam per row (slot 0, score 0)."""
    scores = torch.full((batch, width), float("-inf"), dtype=torch.float32, device=device)
    scores[:, 0] = 0.0
    nodes = torch.zeros((batch, width), dtype=torch.int64, device=device)
    return scores, nodes


def _check_step_values(log_probs: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie: Trie,
                       fn: str) -> None:
    """Value checks that read the tensors (one host sync): nodes in range, live beams at one
    non-leaf depth, V covering that level, no NaN scores."""
    live = scores > float("-inf")
    big = torch.iinfo(torch.int64).max
    stats = torch.stack([
        nodes.min(), nodes.max(),
        torch.where(live, nodes, torch.full_like(nodes, big)).min(),
        torch.where(live, nodes, torch.full_like(nodes, -2)).max(),
        torch.isnan(scores).sum().to(torch.int64),
    ]).tolist()
    lo, hi, live_lo, live_hi, nans = (int(x) for x in stats)
    if nans:
        idx = torch.nonzero(torch.isnan(scores))[0].tolist()
        raise ValueError(f"{fn}: scores has {nans} NaN value(s), first at index {idx}; dead beams must be -inf")
    if lo < -1 or hi >= trie.num_nodes:
        bad = lo if lo < -1 else hi
        raise ValueError(f"{fn}: nodes must be in [-1, {trie.num_nodes}) (trie.num_nodes), got {bad}")
    if live_hi == -2:  # no live beam anywhere: every output slot is padding
        return
    if live_lo < 0:
        idx = torch.nonzero(live & (nodes < 0))[0].tolist()
        raise ValueError(f"{fn}: nodes is -1 at index {idx} but scores there is > -inf; "
                         "a beam without a node must have score -inf")
    d_lo, d_hi = trie.node_depth(live_lo), trie.node_depth(live_hi)
    if d_lo != d_hi:
        raise ValueError(f"{fn}: live beams must all be at one trie depth, got nodes {live_lo} (depth {d_lo}) "
                         f"and {live_hi} (depth {d_hi})")
    if d_lo == trie.depth:
        raise ValueError(f"{fn}: live beams are at leaves (depth {trie.depth} = trie.depth); "
                         "the search is complete, nothing left to expand")
    need = trie.level_sizes[d_lo]
    if log_probs.shape[2] < need:
        raise ValueError(f"{fn}: log_probs must have V >= {need} (trie.level_sizes[{d_lo}], the codes of the "
                         f"level the beams take), got shape {list(log_probs.shape)}")


def trie_beam_step(log_probs: torch.Tensor, scores: torch.Tensor, nodes: torch.Tensor, trie: Trie,
                   *, check_values: bool = True) -> BeamStep:
    """One fused step of trie-constrained beam search.

    log_probs: [B, W, V] float32, slot w of row b holds beam w's log-probabilities over the V codes
        of the level being taken. scores: [B, W] float32 beam scores (-inf = dead beam; first
        step: 0 in slot 0, -inf elsewhere, see ``beam_start``). nodes: [B, W] int64 trie nodes
        (first step: 0 = root; -1 allowed for dead beams). trie: a ``Trie`` on the same device.

    For each row keeps the W best (score + log_prob of a valid child code) over all live beams
    and their children, sorted by score descending, ties by (parent slot, code) ascending.
    Candidates whose score is -inf (or NaN) are not continuations. Rows with fewer than W
    continuations end with padding: score -inf, node/parent/code -1.

    check_values=False skips the checks that read tensor values (one host sync: node range, one
    depth, V large enough, no NaN score); use it only for nodes produced by earlier steps, e.g.
    inside a CUDA graph. The kernels stay memory-safe without them (out-of-range nodes count as
    dead, codes >= V are skipped) but the result is then unspecified.
    Returns BeamStep(scores, nodes, parents, codes), each [B, W].
    """
    fn = "trie_beam_step"
    check_tensor(log_probs, "log_probs", fn)
    check_tensor(scores, "scores", fn)
    check_tensor(nodes, "nodes", fn)
    if not isinstance(trie, Trie):
        raise TypeError(f"{fn}: trie must be a resid_ext.Trie, got {type(trie).__name__}")
    check_dtype(log_probs, "log_probs", (torch.float32,), fn)
    check_dtype(scores, "scores", (torch.float32,), fn)
    check_dtype(nodes, "nodes", (torch.int64,), fn)
    check_ndim(log_probs, "log_probs", 3, fn, "[B, W, V]")
    b, w, v = log_probs.shape
    if w < 1 or v < 1:
        raise ValueError(f"{fn}: log_probs must be [B, W, V] with W >= 1 and V >= 1, got {list(log_probs.shape)}")
    check_shape(scores, "scores", (b, w), fn)
    check_shape(nodes, "nodes", (b, w), fn)
    devices = {"log_probs": log_probs.device, "scores": scores.device, "nodes": nodes.device, "trie": trie.device}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"{fn}: all tensors and the trie must be on one device, got {listing}")
    device = log_probs.device
    cuda = device.type == "cuda"
    if cuda:
        _device.require_cuda_kernels(fn, device)
        if w > _CUDA_MAX_WIDTH:
            raise ValueError(f"{fn}: beam width W must be <= {_CUDA_MAX_WIDTH} on CUDA, got {w}")
    elif device.type != "cpu":
        raise ValueError(f"{fn}: tensors must be on cpu or cuda, got {device}")
    if w * max(trie.level_sizes) >= 2**32:  # candidates per row are numbered in 32 bits
        raise ValueError(f"{fn}: W * max(trie.level_sizes) must be < 2^32, got {w} * {max(trie.level_sizes)}")
    if check_values and b:
        _check_step_values(log_probs, scores, nodes, trie, fn)

    log_probs, scores, nodes = log_probs.contiguous(), scores.contiguous(), nodes.contiguous()
    out = BeamStep(
        torch.empty((b, w), dtype=torch.float32, device=device),
        torch.empty((b, w), dtype=torch.int64, device=device),
        torch.empty((b, w), dtype=torch.int64, device=device),
        torch.empty((b, w), dtype=torch.int64, device=device),
    )
    if b == 0:
        return out
    args = (log_probs.data_ptr(), scores.data_ptr(), nodes.data_ptr(), trie.child_offsets.data_ptr(),
            trie.child_tokens.data_ptr(), trie.child_nodes.data_ptr(), trie.num_nodes, b, w, v,
            out.scores.data_ptr(), out.nodes.data_ptr(), out.parents.data_ptr(), out.codes.data_ptr())
    if cuda:
        with torch.cuda.device(device):
            _C.trie_beam_step_cuda(*args, _device.cuda_stream(device))
    else:
        _C.trie_beam_step_cpu(*args)
    return out
