"""The generator's beam search on CUDA equals the CPU run (skips without a GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import resid_ext  # noqa: E402
from test_decode import random_inputs, random_sids, tiny_model  # noqa: E402

from resid.decode import beam_search  # noqa: E402

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and resid_ext.has_cuda()),
                                reason="needs a GPU and resid_ext built with CUDA")


@pytest.mark.parametrize("n,codes,beam", [(40, [4, 5, 6], 8), (3, [3, 4, 4], 8), (500, [16, 16, 4], 50)])
def test_cuda_matches_cpu(n, codes, beam):
    sids = random_sids(n, codes, seed=n)
    model = tiny_model(codes, seed=n)
    enc, mask = random_inputs(model, sids, B=6, T=4, seed=n)
    cpu = beam_search(model, enc, mask, resid_ext.Trie(torch.as_tensor(sids)), beam)
    gpu_model = tiny_model(codes, seed=n).cuda()
    trie = resid_ext.Trie(torch.as_tensor(sids)).to("cuda")
    gpu = beam_search(gpu_model, enc.cuda(), mask.cuda(), trie, beam)
    fin = torch.isfinite(cpu.scores)
    assert torch.equal(torch.isfinite(gpu.scores.cpu()), fin)
    torch.testing.assert_close(gpu.scores.cpu()[fin], cpu.scores[fin], atol=1e-4, rtol=0)
    assert torch.equal(gpu.items.cpu(), cpu.items)  # random tiny models: no near-ties at 1e-4
