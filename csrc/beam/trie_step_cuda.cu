// Fused trie-constrained beam step, CUDA twin of trie_step_cpu.cpp (same contract, same output
// bit for bit: both rank candidates with trie_step_common.h).
//
// One block of 256 threads per row. Candidates (live beam w, child edge of its node) are never
// materialised: each pass re-enumerates them (warp per beam, lane per child, so child codes and
// log-probs are read by consecutive lanes) and recomputes their unique 64-bit rank.
//   1. Child counts of the W beams -> exclusive prefix sum `off` (flat candidate numbering).
//   2. Radix select, 8 bits per pass from the top, for the K-th best rank, K = min(W, valid
//      candidates): a 256-bin shared histogram of the candidates still matching the chosen prefix.
//      Stops as soon as the prefix's bucket is needed whole (usually after 3-4 passes; ranks are
//      unique, so at most 8). Ties cannot straddle the threshold: the rank includes the flat index.
//   3. Gather the K selected ranks (order-free atomics), bitonic-sort them descending in shared
//      memory, decode each rank to (score, parent slot, code, node); pad the rest.
// Shared memory per block: W int64 edge starts + P uint64 ranks (P = next power of two >= W) +
// (W + 1) uint32 offsets + 256 uint32 bins: <= 21.5 KiB for W <= 1024 (checked in beam.py).
#include <cuda_runtime.h>

#include <cstdint>

#include "beam/trie_step.h"
#include "beam/trie_step_common.h"
#include "common/check.h"

namespace resid {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;

// Calls op(rank) for every valid candidate of `row` (any order, each exactly once).
template <typename Op>
__device__ void for_each_candidate(const BeamStepArgs& a, int64_t row, const uint32_t* off,
                                   const int64_t* edge_begin, Op& op) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t w = warp; w < a.width; w += kWarps) {
    const uint32_t first = off[w], deg = off[w + 1] - first;
    if (deg == 0) continue;
    const float score = a.scores[row * a.width + w];
    const float* lp = a.log_probs + (row * a.width + w) * a.vocab;
    const int64_t* codes = a.trie.child_tokens + edge_begin[w];
    for (uint32_t j = lane; j < deg; j += 32) {
      const int64_t code = codes[j];
      if (code >= a.vocab) continue;  // only reachable when the caller skipped value checks
      const uint64_t rank = beam::candidate_rank(score, lp[code], first + j);
      if (rank != 0) op(rank);
    }
  }
}

struct HistOp {
  uint64_t prefix, mask;
  int shift;
  uint32_t* hist;
  __device__ void operator()(uint64_t rank) const {
    if ((rank & mask) == prefix) atomicAdd(&hist[(rank >> shift) & (kBins - 1)], 1u);
  }
};

struct GatherOp {
  uint64_t prefix, mask;
  uint64_t* sel;
  uint32_t* count;
  uint32_t cap;
  __device__ void operator()(uint64_t rank) const {
    if ((rank & mask) >= prefix) {
      const uint32_t pos = atomicAdd(count, 1u);
      if (pos < cap) sel[pos] = rank;
    }
  }
};

__global__ void __launch_bounds__(kThreads) trie_beam_step_kernel(BeamStepArgs a, uint32_t pow2_width) {
  extern __shared__ uint64_t smem[];
  const int64_t row = blockIdx.x;
  const int64_t W = a.width;
  const int t = threadIdx.x;
  int64_t* edge_begin = reinterpret_cast<int64_t*>(smem);         // [W]
  uint64_t* sel = smem + W;                                        // [pow2_width]
  uint32_t* off = reinterpret_cast<uint32_t*>(sel + pow2_width);   // [W + 1]
  uint32_t* hist = off + W + 1;                                    // [kBins]
  __shared__ uint32_t scan[kThreads];
  __shared__ uint64_t s_prefix, s_mask;
  __shared__ uint32_t s_need, s_keep, s_done, s_count;

  // 1. Child counts of this thread's contiguous chunk of slots, then a block-wide scan.
  const int64_t chunk = (W + kThreads - 1) / kThreads;
  const int64_t w0 = t * chunk < W ? t * chunk : W;
  const int64_t w1 = w0 + chunk < W ? w0 + chunk : W;
  uint32_t local = 0;
  for (int64_t w = w0; w < w1; ++w) {
    const uint32_t deg = static_cast<uint32_t>(beam::slot_children(a, row, w, &edge_begin[w]));
    off[w] = deg;
    local += deg;
  }
  scan[t] = local;
  __syncthreads();
  for (int d = 1; d < kThreads; d <<= 1) {  // Hillis-Steele inclusive scan
    const uint32_t v = t >= d ? scan[t - d] : 0u;
    __syncthreads();
    scan[t] += v;
    __syncthreads();
  }
  uint32_t run = scan[t] - local;
  for (int64_t w = w0; w < w1; ++w) {
    const uint32_t deg = off[w];
    off[w] = run;
    run += deg;
  }
  if (t == 0) {
    off[W] = scan[kThreads - 1];
    s_prefix = 0;
    s_mask = 0;
    s_done = 0;
    s_count = 0;
  }
  __syncthreads();

  // 2. Radix select of the K-th best rank (K = s_keep), top digit first.
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = t; i < kBins; i += kThreads) hist[i] = 0;
    __syncthreads();
    HistOp hop{s_prefix, s_mask, shift, hist};
    for_each_candidate(a, row, off, edge_begin, hop);
    __syncthreads();
    if (t == 0) {
      if (shift == 56) {  // the first pass sees every valid candidate
        uint32_t valid = 0;
        for (int i = 0; i < kBins; ++i) valid += hist[i];
        s_keep = valid < W ? valid : static_cast<uint32_t>(W);
        s_need = s_keep;
        if (valid <= W) s_done = 1;  // keep them all: prefix = mask = 0 selects every candidate
      }
      if (!s_done) {
        uint32_t above = 0;
        int d = kBins - 1;
        for (; d > 0; --d) {
          if (above + hist[d] >= s_need) break;
          above += hist[d];
        }
        s_need -= above;
        s_prefix |= static_cast<uint64_t>(d) << shift;
        s_mask |= static_cast<uint64_t>(kBins - 1) << shift;
        if (hist[d] == s_need) s_done = 1;  // the whole bucket is needed: threshold found
      }
    }
    __syncthreads();
    if (s_done) break;
  }

  // 3. Gather the s_keep selected ranks, sort them best first, write the row.
  const uint32_t keep = s_keep;
  GatherOp gop{s_prefix, s_mask, sel, &s_count, pow2_width};
  for_each_candidate(a, row, off, edge_begin, gop);
  __syncthreads();
  for (uint32_t i = keep + t; i < pow2_width; i += kThreads) sel[i] = 0;  // 0 sorts last
  __syncthreads();
  for (uint32_t k = 2; k <= pow2_width; k <<= 1) {
    for (uint32_t j = k >> 1; j > 0; j >>= 1) {
      for (uint32_t i = t; i < pow2_width; i += kThreads) {
        const uint32_t ixj = i ^ j;
        if (ixj > i) {
          const uint64_t x = sel[i], y = sel[ixj];
          const bool descending = (i & k) == 0;
          if (descending ? x < y : x > y) {
            sel[i] = y;
            sel[ixj] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int64_t r = t; r < W; r += kThreads) {
    if (r < keep) beam::write_selected(a, row, r, sel[r], off, edge_begin);
    else beam::write_padding(a, row, r);
  }
}

}  // namespace

void trie_beam_step_cuda(const BeamStepArgs& a, void* stream) {
  if (a.batch == 0) return;
  uint32_t pow2 = 1;
  while (pow2 < static_cast<uint64_t>(a.width)) pow2 <<= 1;
  const size_t smem = a.width * sizeof(int64_t) + pow2 * sizeof(uint64_t) + (a.width + 1) * sizeof(uint32_t) +
                      kBins * sizeof(uint32_t);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  trie_beam_step_kernel<<<static_cast<unsigned>(a.batch), kThreads, smem, s>>>(a, pow2);
  RESID_CUDA_CHECK_LAUNCH(s);
}

}  // namespace resid
