"""The package imports on any machine and reports what was built."""
import os
import subprocess
import sys

import torch

import resid
import resid_ext
from _env import NEUTRAL_CWD, pythonpath


def test_build_info_keys_and_types():
    info = resid_ext.build_info()
    for key in ("version", "cuda", "cuda_archs", "openmp", "cuda_devices"):
        assert key in info, key
    assert info["version"] == resid.__version__ == resid_ext.__version__
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    if info["cuda"]:
        assert info["cuda_archs"], "CUDA build must list its architectures"
    else:
        assert info["cuda_archs"] == []
    if not torch.cuda.is_available():
        assert info["cuda_devices"] == 0


def test_cli_info_runs():
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    out = subprocess.run([sys.executable, "-m", "resid", "info"], capture_output=True, text=True, check=True,
                         env=env, cwd=NEUTRAL_CWD)
    assert '"ext.cuda"' in out.stdout
