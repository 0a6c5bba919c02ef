"""CUDA twin vs the CPU twin (the spec) of balanced assignment; skips without a GPU.

Both twins run the same per-segment routine with the same float operations; candidate lists
come from GEMMs whose rounding may differ between cuBLAS and CPU BLAS, so labels must be
equal or, where near-ties flip, give the same total cost within 1e-4.
"""
from __future__ import annotations

import pytest
import torch

import resid_ext
import resid_ext.balanced as B
from resid.kmeans import balanced_kmeans, balanced_kmeans_segmented

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and resid_ext.has_cuda()), reason="needs a CUDA GPU and a CUDA build"
)


@pytest.fixture(params=["gpu-kernel", "host-auction"], autouse=True)
def auction(request, monkeypatch):
    """Every test runs twice: the auction in the CUDA kernel, and on the host beside GPU
    candidates (what CUDA solves with few segments do, B.GPU_AUCTION_MIN_SEGMENTS)."""
    monkeypatch.setattr(B, "GPU_AUCTION_MIN_SEGMENTS", 0 if request.param == "gpu-kernel" else 1 << 62)
    want = "cuda" if request.param == "gpu-kernel" else "cpu"
    assert B.auction_device(torch.device("cuda"), 1).type == want
    return request.param


def _cost(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((x.double().cpu() - c.double().cpu()[labels.cpu()]) ** 2).sum())


def _same_or_equal_cost(x, c, cpu_labels, gpu_labels):
    if torch.equal(cpu_labels, gpu_labels.cpu()):
        return
    a, b = _cost(x, c, cpu_labels), _cost(x, c, gpu_labels)
    assert abs(a - b) <= 1e-4 * max(a, 1e-12), (a, b)


@pytest.mark.parametrize("n,k,d", [(500, 8, 16), (2000, 64, 32), (3000, 100, 8)])
def test_balanced_assign_parity(n, k, d):
    g = torch.Generator().manual_seed(n + k)
    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    cpu = resid_ext.balanced_assign(x, c)
    gpu = resid_ext.balanced_assign(x.cuda(), c.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.int64
    cap = resid_ext.default_capacity(n, k)
    assert bool((torch.bincount(gpu.cpu(), minlength=k) <= cap).all())
    _same_or_equal_cost(x, c, cpu, gpu)


def test_segmented_parity_and_half_precision():
    g = torch.Generator().manual_seed(1)
    sizes_n, sizes_k = [40, 0, 300, 7], [4, 2, 50, 7]
    x = torch.randn(sum(sizes_n), 8, generator=g)
    c = torch.randn(sum(sizes_k), 8, generator=g)
    cap = torch.cat([resid_ext.default_capacity(n, k) if n else torch.zeros(k, dtype=torch.int64)
                     for n, k in zip(sizes_n, sizes_k)])
    off = torch.tensor([0] + sizes_n).cumsum(0)
    coff = torch.tensor([0] + sizes_k).cumsum(0)
    cpu = resid_ext.balanced_assign_segmented(x, off, c, coff, cap)
    gpu = resid_ext.balanced_assign_segmented(x.cuda(), off.cuda(), c.cuda(), coff.cuda(), cap.cuda())
    _same_or_equal_cost(x, c, cpu, gpu)
    for dt in (torch.bfloat16, torch.float16):
        lab = resid_ext.balanced_assign(x.cuda().to(dt), c.cuda().to(dt))
        assert bool((torch.bincount(lab.cpu(), minlength=c.shape[0]) <= resid_ext.default_capacity(x.shape[0], c.shape[0])).all())


def test_kmeans_cuda_deterministic_and_balanced():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4000, 16, generator=g).cuda()
    a = balanced_kmeans(x, 32, iters=3, seed=0)
    b = balanced_kmeans(x, 32, iters=3, seed=0)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert torch.equal(torch.bincount(a.labels.cpu(), minlength=32), resid_ext.default_capacity(4000, 32))


def test_kmeans_cuda_cost_matches_cpu():
    """Whole Lloyd runs: CPU and CUDA may part on a near-tie, but end at the same quality."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6000, 24, generator=g)
    cpu = balanced_kmeans(x, 48, iters=6, seed=0)
    gpu = balanced_kmeans(x.cuda(), 48, iters=6, seed=0)
    assert torch.equal(torch.bincount(gpu.labels.cpu(), minlength=48), resid_ext.default_capacity(6000, 48))
    a, b = _cost(x, cpu.centroids, cpu.labels), _cost(x, gpu.centroids, gpu.labels)
    assert abs(a - b) <= 0.01 * a, (a, b)


def test_segmented_kmeans_cuda_cost_matches_cpu():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5000, 16, generator=g)
    off = torch.tensor([0, 1000, 1000, 3500, 5000])
    cpu = balanced_kmeans_segmented(x, off, 16, iters=4, seed=0)
    gpu = balanced_kmeans_segmented(x.cuda(), off.cuda(), 16, iters=4, seed=0)
    assert torch.equal(gpu.centroid_offsets.cpu(), cpu.centroid_offsets)
    assert torch.equal(torch.bincount(gpu.labels.cpu(), minlength=int(cpu.centroid_offsets[-1])),
                       torch.bincount(cpu.labels, minlength=int(cpu.centroid_offsets[-1])))
    a, b = _cost(x, cpu.centroids, cpu.labels), _cost(x, gpu.centroids, gpu.labels)
    assert abs(a - b) <= 0.01 * a, (a, b)
