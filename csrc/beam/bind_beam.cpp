// Python bindings of the beam family. Tensors arrive as data pointers (ints) already validated
// and made contiguous by resid_ext/beam.py; every call releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "beam/trie_step.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Hands a vector to numpy without a copy; the capsule frees it with the array.
py::array_t<int64_t> to_numpy(std::vector<int64_t>&& v) {
  auto* owned = new std::vector<int64_t>(std::move(v));
  py::capsule owner(owned, [](void* q) { delete static_cast<std::vector<int64_t>*>(q); });
  return py::array_t<int64_t>({static_cast<py::ssize_t>(owned->size())}, {sizeof(int64_t)}, owned->data(), owner);
}

resid::BeamStepArgs step_args(std::uintptr_t log_probs, std::uintptr_t scores, std::uintptr_t nodes,
                              std::uintptr_t child_offsets, std::uintptr_t child_tokens,
                              std::uintptr_t child_nodes, int64_t num_nodes, int64_t batch, int64_t width,
                              int64_t vocab, std::uintptr_t out_scores, std::uintptr_t out_nodes,
                              std::uintptr_t out_parents, std::uintptr_t out_codes) {
  resid::BeamStepArgs a;
  a.log_probs = ptr<const float>(log_probs);
  a.scores = ptr<const float>(scores);
  a.nodes = ptr<const int64_t>(nodes);
  a.trie = {ptr<const int64_t>(child_offsets), ptr<const int64_t>(child_tokens), ptr<const int64_t>(child_nodes),
            num_nodes};
  a.batch = batch;
  a.width = width;
  a.vocab = vocab;
  a.out_scores = ptr<float>(out_scores);
  a.out_nodes = ptr<int64_t>(out_nodes);
  a.out_parents = ptr<int64_t>(out_parents);
  a.out_codes = ptr<int64_t>(out_codes);
  return a;
}

}  // namespace

void bind_beam(py::module_& m) {
  m.def(
      "trie_build",
      [](std::uintptr_t sids, int64_t n, int64_t l) {
        resid::TrieCSR t;
        {
          py::gil_scoped_release nogil;
          t = resid::trie_build_cpu(ptr<const int64_t>(sids), n, l);
        }
        py::dict out;
        out["child_offsets"] = to_numpy(std::move(t.child_offsets));
        out["child_tokens"] = to_numpy(std::move(t.child_tokens));
        out["child_nodes"] = to_numpy(std::move(t.child_nodes));
        out["leaf_items"] = to_numpy(std::move(t.leaf_items));
        out["level_offsets"] = to_numpy(std::move(t.level_offsets));
        out["level_sizes"] = to_numpy(std::move(t.level_sizes));
        return out;
      },
      py::arg("sids"), py::arg("n"), py::arg("l"),
      "Trie CSR of a contiguous int64 [n, l] SID table on the host (dict of numpy int64 arrays)");

  m.def(
      "trie_check_csr",
      [](std::uintptr_t child_offsets, std::uintptr_t child_tokens, std::uintptr_t child_nodes,
         std::uintptr_t leaf_items, std::uintptr_t level_offsets, int64_t num_nodes, int64_t num_items,
         int64_t depth) {
        py::gil_scoped_release nogil;
        resid::trie_check_csr(ptr<const int64_t>(child_offsets), ptr<const int64_t>(child_tokens),
                              ptr<const int64_t>(child_nodes), ptr<const int64_t>(leaf_items),
                              ptr<const int64_t>(level_offsets), num_nodes, num_items, depth);
      },
      py::arg("child_offsets"), py::arg("child_tokens"), py::arg("child_nodes"), py::arg("leaf_items"),
      py::arg("level_offsets"), py::arg("num_nodes"), py::arg("num_items"), py::arg("depth"),
      "Check every CSR invariant of a host trie; ValueError naming the first broken one");

  m.def(
      "trie_beam_step_cpu",
      [](std::uintptr_t log_probs, std::uintptr_t scores, std::uintptr_t nodes, std::uintptr_t child_offsets,
         std::uintptr_t child_tokens, std::uintptr_t child_nodes, int64_t num_nodes, int64_t batch, int64_t width,
         int64_t vocab, std::uintptr_t out_scores, std::uintptr_t out_nodes, std::uintptr_t out_parents,
         std::uintptr_t out_codes) {
        const resid::BeamStepArgs a = step_args(log_probs, scores, nodes, child_offsets, child_tokens, child_nodes,
                                                num_nodes, batch, width, vocab, out_scores, out_nodes, out_parents,
                                                out_codes);
        py::gil_scoped_release nogil;
        resid::trie_beam_step_cpu(a);
      },
      py::arg("log_probs"), py::arg("scores"), py::arg("nodes"), py::arg("child_offsets"), py::arg("child_tokens"),
      py::arg("child_nodes"), py::arg("num_nodes"), py::arg("batch"), py::arg("width"), py::arg("vocab"),
      py::arg("out_scores"), py::arg("out_nodes"), py::arg("out_parents"), py::arg("out_codes"),
      "Fused trie-constrained beam step on host pointers (see csrc/beam/trie_step_cpu.cpp)");

#ifdef RESID_WITH_CUDA
  m.def(
      "trie_beam_step_cuda",
      [](std::uintptr_t log_probs, std::uintptr_t scores, std::uintptr_t nodes, std::uintptr_t child_offsets,
         std::uintptr_t child_tokens, std::uintptr_t child_nodes, int64_t num_nodes, int64_t batch, int64_t width,
         int64_t vocab, std::uintptr_t out_scores, std::uintptr_t out_nodes, std::uintptr_t out_parents,
         std::uintptr_t out_codes, std::uintptr_t stream) {
        const resid::BeamStepArgs a = step_args(log_probs, scores, nodes, child_offsets, child_tokens, child_nodes,
                                                num_nodes, batch, width, vocab, out_scores, out_nodes, out_parents,
                                                out_codes);
        py::gil_scoped_release nogil;
        resid::trie_beam_step_cuda(a, reinterpret_cast<void*>(stream));
      },
      py::arg("log_probs"), py::arg("scores"), py::arg("nodes"), py::arg("child_offsets"), py::arg("child_tokens"),
      py::arg("child_nodes"), py::arg("num_nodes"), py::arg("batch"), py::arg("width"), py::arg("vocab"),
      py::arg("out_scores"), py::arg("out_nodes"), py::arg("out_parents"), py::arg("out_codes"), py::arg("stream"),
      "Fused trie-constrained beam step on device pointers, launched on `stream` (cudaStream_t as int)");
#endif
}
