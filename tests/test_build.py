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


def test_cpp_errors_arrive_as_python_exceptions():
    """A C++ check (here the Trie's duplicate rows) must raise ValueError, not kill Python.

    Run in a child process so that a broken build fails this test with the cure named instead
    of ending the whole session. Seen on the lent GPU machines: the image's /opt/gcc/bin
    toolchain, first on PATH, built a module that crashed (SIGSEGV) on every C++ error; the
    distribution's g++ built a working one.
    """
    code = "import torch, resid_ext\nresid_ext.Trie(torch.tensor([[0, 1], [0, 1]]))"
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=NEUTRAL_CWD)
    assert out.returncode == 1, (
        f"the child exited with {out.returncode} (negative: killed by a signal): C++ exceptions do not reach "
        "Python in this build of resid_ext._C. Rebuild with the system compiler, e.g. "
        "CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++ pip install .\n" + out.stderr[-2000:])
    assert "ValueError: Trie: sids rows 0 and 1 are identical ([0, 1])" in out.stderr, out.stderr[-2000:]
