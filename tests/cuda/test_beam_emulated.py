"""The CUDA beam-step kernel's own code, run on the host (emulate_beam_step.py), equals the CPU
twin bit for bit. Runs everywhere g++ (C++20) is available, so GPU-less CI checks the kernel's
scan, radix select, gather, bitonic sort and decoding; test_beam_parity.py covers the real GPU."""
import shutil

import pytest
import torch

from emulate_beam_step import build_emulator, emulate
from reference_beam import random_beam_state, random_sids
from resid_ext import Trie, trie_beam_step

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the emulated kernel")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build_emulator(tmp_path_factory.mktemp("beam_emu"))


@pytest.mark.parametrize("levels,n,B,W,depth,ties,seed", [
    ([4, 5, 6], 60, 2, 4, 2, True, 0),        # small W, three levels, ties
    ([16, 16], 256, 2, 1, 1, False, 1),       # W = 1
    ([3, 3, 3], 27, 1, 30, 2, False, 2),      # fewer candidates than W: padding
    ([40, 30], 1200, 1, 300, 1, True, 3),     # W > 256 threads: several slots per thread
])
@pytest.mark.parametrize("all_equal", [False, True])
def test_emulated_cuda_kernel_equals_cpu(lib, levels, n, B, W, depth, ties, seed, all_equal):
    trie = Trie(random_sids(n, levels, seed))
    lp, scores, nodes = random_beam_state(trie, B, W, depth, seed, ties=ties)
    if all_equal:  # every selection decided by the tie rule
        lp = torch.zeros_like(lp)
        scores = torch.where(scores > float("-inf"), torch.zeros_like(scores), scores)
    ref = trie_beam_step(lp, scores, nodes, trie)
    got = emulate(lib, lp, scores, nodes, trie)
    for r, g in zip(ref, got):
        assert torch.equal(r, g)
