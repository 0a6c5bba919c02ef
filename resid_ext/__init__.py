"""resid_ext: validated torch entry points around the compiled kernels in ``resid_ext._C``.

Every public function takes torch tensors on CPU or CUDA, validates them once
(``_validate.py``), and dispatches to the CPU (OpenMP) or CUDA twin of the kernel.
"""
from __future__ import annotations

from resid_ext import _C
from resid_ext._device import build_info, has_cuda
from resid_ext.balanced import balanced_assign, balanced_assign_segmented, default_capacity
from resid_ext.beam import BeamStep, Trie, beam_start, trie_beam_step

__version__: str = _C.__version__

__all__ = [
    "balanced_assign",
    "balanced_assign_segmented",
    "build_info",
    "default_capacity",
    "has_cuda",
    "__version__",
    "BeamStep",
    "Trie",
    "beam_start",
    "trie_beam_step",
]
