// resid_ext._C: the only translation unit that defines the Python module. Each kernel family
// registers its functions from its own bind_*.cpp; this file adds the build facts.
#include <pybind11/pybind11.h>

#ifdef RESID_WITH_OPENMP
#include <omp.h>
#endif
#ifdef RESID_WITH_CUDA
#include "common/cuda_info.h"
#endif

namespace py = pybind11;

void bind_balanced(py::module_& m);
void bind_beam(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "resid native kernels (balanced assignment, trie beam search); CPU + optional CUDA";
  m.attr("__version__") = RESID_VERSION;

#ifdef RESID_WITH_CUDA
  m.def("has_cuda", [] { return true; }, "True when the CUDA kernels are compiled in");
  m.def("cuda_archs", [] { return std::string(RESID_CUDA_ARCHS); });
  m.def("cuda_device_count", [] { return resid::cuda_device_count(); },
        "Number of usable CUDA devices (0 without a driver or GPU)");
#else
  m.def("has_cuda", [] { return false; }, "True when the CUDA kernels are compiled in");
  m.def("cuda_archs", [] { return std::string(); });
  m.def("cuda_device_count", [] { return 0; });
#endif

#ifdef RESID_WITH_OPENMP
  m.def("has_openmp", [] { return true; });
  m.def("openmp_max_threads", [] { return omp_get_max_threads(); });
#else
  m.def("has_openmp", [] { return false; });
  m.def("openmp_max_threads", [] { return 1; });
#endif

  bind_balanced(m);
  bind_beam(m);
}
