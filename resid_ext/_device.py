"""Build facts and device dispatch shared by every kernel wrapper."""
from __future__ import annotations

from typing import Any

import torch

from resid_ext import _C


def has_cuda() -> bool:
    """True when the CUDA kernels were compiled into ``resid_ext._C``."""
    return bool(_C.has_cuda())


def build_info() -> dict[str, Any]:
    """What was built and what this machine offers.

    Keys: ``version``, ``cuda`` (CUDA kernels compiled in), ``cuda_archs`` (list of str),
    ``openmp``, ``openmp_threads``, ``cuda_devices`` (usable GPUs; 0 without driver/GPU).
    """
    archs = _C.cuda_archs()
    return {
        "version": _C.__version__,
        "cuda": has_cuda(),
        "cuda_archs": [a for a in archs.split(",") if a],
        "openmp": bool(_C.has_openmp()),
        "openmp_threads": int(_C.openmp_max_threads()),
        "cuda_devices": int(_C.cuda_device_count()),
    }


def require_cuda_kernels(fn: str, device: torch.device) -> None:
    """Raise a clear RuntimeError when a CUDA tensor reaches a build without CUDA kernels."""
    if not has_cuda():
        raise RuntimeError(
            f"{fn}: got tensors on {device}, but resid_ext was built without CUDA kernels. "
            "Rebuild with nvcc on PATH and RESID_CUDA=1: RESID_CUDA=1 pip install --force-reinstall ."
        )
    if _C.cuda_device_count() == 0:
        raise RuntimeError(f"{fn}: got tensors on {device}, but no usable CUDA device was found")


def cuda_stream(device: torch.device) -> int:
    """torch's current CUDA stream on ``device``, as an integer handle for the kernels."""
    return int(torch.cuda.current_stream(device).cuda_stream)
