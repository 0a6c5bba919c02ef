// pybind11 registration of the balanced-assignment kernels. Pointers arrive as integers
// (tensor.data_ptr()) from resid_ext/balanced.py, which validated everything; the GIL is
// released while the kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "balanced/assign.h"
#include "balanced/candidates.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

resid::BalancedAssignArgs make_args(int64_t num_segments, int64_t d, int64_t m, int64_t warm, double eps_div, std::uintptr_t offsets,
                                    std::uintptr_t centroid_offsets, std::uintptr_t cand_idx,
                                    std::uintptr_t cand_dist, std::uintptr_t price0, std::uintptr_t capacity, std::uintptr_t x,
                                    std::uintptr_t centroids, std::uintptr_t heap_offsets,
                                    std::uintptr_t heap_bid, std::uintptr_t heap_pt, std::uintptr_t count,
                                    std::uintptr_t price, std::uintptr_t dropped, std::uintptr_t stack, std::uintptr_t exact,
                                    std::uintptr_t bound, std::uintptr_t labels, std::uintptr_t cache_offsets,
                                    std::uintptr_t dist_cache, std::uintptr_t cache_slot,
                                    std::uintptr_t cur_price, std::uintptr_t row_norm, std::uintptr_t sel_val,
                                    std::uintptr_t sel_idx) {
  resid::BalancedAssignArgs a;
  a.num_segments = num_segments;
  a.d = d;
  a.m = m;
  a.warm = warm;
  a.eps_div = static_cast<float>(eps_div);
  a.offsets = ptr<const int64_t>(offsets);
  a.centroid_offsets = ptr<const int64_t>(centroid_offsets);
  a.cand_idx = ptr<int32_t>(cand_idx);
  a.cand_dist = ptr<float>(cand_dist);
  a.price0 = ptr<const float>(price0);
  a.capacity = ptr<const int64_t>(capacity);
  a.x = ptr<const float>(x);
  a.centroids = ptr<const float>(centroids);
  a.heap_offsets = ptr<const int64_t>(heap_offsets);
  a.heap_bid = ptr<float>(heap_bid);
  a.heap_pt = ptr<int32_t>(heap_pt);
  a.count = ptr<int64_t>(count);
  a.price = ptr<float>(price);
  a.dropped = ptr<uint8_t>(dropped);
  a.stack = ptr<int32_t>(stack);
  a.exact = ptr<uint8_t>(exact);
  a.bound = ptr<float>(bound);
  a.labels = ptr<int64_t>(labels);
  a.cache_offsets = ptr<const int64_t>(cache_offsets);
  a.dist_cache = ptr<const float>(dist_cache);
  a.cache_slot = ptr<const int32_t>(cache_slot);
  a.cur_price = ptr<float>(cur_price);
  a.row_norm = ptr<const float>(row_norm);
  a.sel_val = ptr<float>(sel_val);
  a.sel_idx = ptr<int32_t>(sel_idx);
  return a;
}

constexpr const char* kArgsDoc =
    "(num_segments, d, m, warm, eps_div, offsets, centroid_offsets, cand_idx, cand_dist, price0, capacity, x, "
    "centroids, heap_offsets, heap_bid, heap_pt, count, price, dropped, stack, exact, bound, labels, cache_offsets, "
    "dist_cache, cache_slot, cur_price, row_norm, sel_val, sel_idx) as data_ptr integers; "
    "see csrc/balanced/assign.h. Internal: call resid_ext.balanced_assign instead.";

}  // namespace

void bind_balanced(py::module_& m) {
  m.def(
      "select_candidates_cpu",
      [](std::uintptr_t part, int64_t t, int64_t K, std::uintptr_t xn, std::uintptr_t p0, int64_t mm,
         std::uintptr_t ci, std::uintptr_t cd, int64_t ld, int threads) {
        py::gil_scoped_release release;
        resid::select_candidates_cpu(ptr<const float>(part), t, K, ptr<const float>(xn), ptr<const float>(p0), mm,
                                     ptr<int32_t>(ci), ptr<float>(cd), ld, threads);
      },
      "(part, t, K, xn, p0 or 0, m, cand_idx, cand_dist, ld, threads or 0): see csrc/balanced/candidates.h. "
      "Internal.");
  m.def(
      "cluster_sums_cpu",
      [](std::uintptr_t x, std::uintptr_t labels, int64_t n, int64_t d, int64_t k, std::uintptr_t out, int threads) {
        py::gil_scoped_release release;
        resid::cluster_sums_cpu(ptr<const float>(x), ptr<const int64_t>(labels), n, d, k, ptr<float>(out), threads);
      },
      "(x, labels, n, d, k, out, threads or 0): see csrc/balanced/candidates.h. Internal.");
  m.def(
      "kmeanspp_cpu",
      [](std::uintptr_t x, int64_t p, int64_t d, int64_t k, int64_t first, std::uintptr_t u, std::uintptr_t out) {
        py::gil_scoped_release release;
        resid::kmeanspp_cpu(ptr<const float>(x), p, d, k, first, ptr<const double>(u), ptr<int64_t>(out));
      },
      "(x, p, d, k, first, u, out): see csrc/balanced/candidates.h. Internal.");
  m.def(
      "balanced_assign_cpu",
      [](int64_t S, int64_t d, int64_t mm, int64_t warm, double ed, std::uintptr_t o, std::uintptr_t co, std::uintptr_t ci,
         std::uintptr_t cd, std::uintptr_t p0, std::uintptr_t cap, std::uintptr_t x, std::uintptr_t c, std::uintptr_t ho,
         std::uintptr_t hb, std::uintptr_t hp, std::uintptr_t cnt, std::uintptr_t pr, std::uintptr_t dr, std::uintptr_t st,
         std::uintptr_t ex, std::uintptr_t bd, std::uintptr_t lab, std::uintptr_t cao, std::uintptr_t dc,
         std::uintptr_t cs, std::uintptr_t cp, std::uintptr_t rn, std::uintptr_t sv, std::uintptr_t si, int threads) {
        const auto a =
            make_args(S, d, mm, warm, ed, o, co, ci, cd, p0, cap, x, c, ho, hb, hp, cnt, pr, dr, st, ex, bd, lab, cao, dc, cs, cp, rn, sv, si);
        py::gil_scoped_release release;
        resid::balanced_assign_cpu(a, threads);
      },
      (std::string(kArgsDoc) + " Last argument: OpenMP threads across segments (0: the OpenMP default).").c_str());
#ifdef RESID_WITH_CUDA
  m.def(
      "balanced_assign_cuda",
      [](int64_t S, int64_t d, int64_t mm, int64_t warm, double ed, std::uintptr_t o, std::uintptr_t co, std::uintptr_t ci,
         std::uintptr_t cd, std::uintptr_t p0, std::uintptr_t cap, std::uintptr_t x, std::uintptr_t c, std::uintptr_t ho,
         std::uintptr_t hb, std::uintptr_t hp, std::uintptr_t cnt, std::uintptr_t pr, std::uintptr_t dr, std::uintptr_t st,
         std::uintptr_t ex, std::uintptr_t bd, std::uintptr_t lab, std::uintptr_t cao, std::uintptr_t dc,
         std::uintptr_t cs, std::uintptr_t cp, std::uintptr_t rn, std::uintptr_t sv, std::uintptr_t si,
         std::uintptr_t stream) {
        const auto a =
            make_args(S, d, mm, warm, ed, o, co, ci, cd, p0, cap, x, c, ho, hb, hp, cnt, pr, dr, st, ex, bd, lab, cao, dc, cs, cp, rn, sv, si);
        py::gil_scoped_release release;
        resid::balanced_assign_cuda(a, reinterpret_cast<void*>(stream));
      },
      (std::string(kArgsDoc) + " Last argument: the cudaStream_t as an integer.").c_str());
#endif
}
