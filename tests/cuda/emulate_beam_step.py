"""Run the CUDA beam-step kernel's code on the host and compare it with the CPU twin.

For GPU-less machines. ``python tests/cuda/emulate_beam_step.py`` runs 20 cases (about a
minute); tests/cuda/test_beam_emulated.py runs a few of them in the test suite.
The kernel text of csrc/beam/trie_step_cuda.cu is compiled by g++ (C++20) with each block
emulated by 256 std::threads: ``__syncthreads`` is a std::barrier, ``__shared__`` variables are
function statics (one block runs at a time), ``atomicAdd`` is an atomic fetch-add. This checks the
algorithm and its synchronisation (scan, radix select, gather, bitonic sort, decoding), not
GPU-specific behaviour (memory model details, launch limits): tests/cuda/test_beam_parity.py does
that on a GPU.

    PYTHONPATH=$PWD/python:$PWD python tests/cuda/emulate_beam_step.py
Prints one JSON line per case and exits 1 on any mismatch.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from reference_beam import random_beam_state, random_sids  # noqa: E402

from resid_ext import Trie, trie_beam_step  # noqa: E402

PRELUDE = r"""
#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>
struct Dim { unsigned x; };
thread_local Dim threadIdx;
Dim blockIdx;
static uint64_t g_smem[8192];
static std::barrier<>* g_bar;
#define __global__
#define __device__
#define __launch_bounds__(x)
#define __shared__ static
#define __syncthreads() g_bar->arrive_and_wait()
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
"""

DRIVER = r"""
extern "C" void emu_step(const float* lp, const float* sc, const int64_t* nodes, const int64_t* co,
                         const int64_t* ct, const int64_t* cn, int64_t num_nodes, int64_t B, int64_t W,
                         int64_t V, float* os, int64_t* on, int64_t* op, int64_t* oc) {
  resid::BeamStepArgs a{lp, sc, nodes, {co, ct, cn, num_nodes}, B, W, V, os, on, op, oc};
  uint32_t pow2 = 1;
  while (pow2 < static_cast<uint64_t>(W)) pow2 <<= 1;
  std::barrier<> bar(resid::kThreads);
  g_bar = &bar;
  for (int64_t b = 0; b < B; ++b) {
    blockIdx.x = static_cast<unsigned>(b);
    std::vector<std::thread> threads;
    for (int t = 0; t < resid::kThreads; ++t)
      threads.emplace_back([&, t] { threadIdx.x = t; resid::trie_beam_step_kernel(a, pow2); });
    for (auto& th : threads) th.join();
  }
}
"""


def _host_source() -> str:
    src = (ROOT / "csrc/beam/trie_step_cuda.cu").read_text()
    src = src.replace("#include <cuda_runtime.h>", "")
    src = src.replace("extern __shared__ uint64_t smem[];", "uint64_t* smem = g_smem;")
    src = src[: src.index("}  // namespace\n\nvoid trie_beam_step_cuda")]  # drop the launcher
    src = src.replace("namespace {\n", "", 1) + "}  // namespace resid\n"  # expose the kernel
    return PRELUDE + src + DRIVER


def build_emulator(tmp: Path) -> ctypes.CDLL:
    cpp, so = tmp / "emu.cpp", tmp / "emu.so"
    cpp.write_text(_host_source())
    subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-shared", f"-I{ROOT / 'csrc'}", "-o", str(so), str(cpp),
                    "-lpthread"], check=True)
    lib = ctypes.CDLL(str(so))
    lib.emu_step.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 4
    return lib


def emulate(lib: ctypes.CDLL, lp, scores, nodes, trie):
    """The emulated kernel's BeamStep-like tuple for CPU inputs (contiguous)."""
    B, W, V = lp.shape
    out = (torch.empty(B, W), *(torch.empty(B, W, dtype=torch.int64) for _ in range(3)))
    lib.emu_step(lp.data_ptr(), scores.data_ptr(), nodes.data_ptr(), trie.child_offsets.data_ptr(),
                 trie.child_tokens.data_ptr(), trie.child_nodes.data_ptr(), trie.num_nodes, B, W, V,
                 *(t.data_ptr() for t in out))
    return out


CASES = [  # (levels, n, B, W, depth, ties)
    ([4, 5, 6], 60, 3, 4, 1, False), ([4, 5, 6], 60, 3, 4, 2, True), ([8, 8], 40, 4, 16, 1, True),
    ([3, 3, 3], 27, 2, 30, 2, False), ([16, 16], 200, 5, 7, 0, False), ([16, 16], 256, 2, 1, 1, True),
    ([64, 64], 3000, 2, 256, 1, True), ([300, 40], 5000, 2, 300, 1, False), ([2000, 4], 6000, 1, 50, 0, False),
    ([50, 50], 2500, 2, 1024, 1, True),
]


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_emulator(Path(tmp))
        for seed, (levels, n, B, W, depth, ties) in enumerate(CASES):
            trie = Trie(random_sids(n, levels, seed))
            for variant in ("random", "all_equal"):
                lp, scores, nodes = random_beam_state(trie, B, W, depth, seed, ties=ties)
                if variant == "all_equal":  # every selection decided by the tie rule
                    lp = torch.zeros_like(lp)
                    scores = torch.where(scores > float("-inf"), torch.zeros_like(scores), scores)
                ref = trie_beam_step(lp, scores, nodes, trie)
                got = emulate(lib, lp, scores, nodes, trie)
                same = all(torch.equal(r, g) for r, g in zip(ref, got))
                failures += not same
                print(json.dumps({"levels": levels, "B": B, "W": W, "depth": depth, "ties": ties,
                                  "variant": variant, "same_as_cpu": same}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
