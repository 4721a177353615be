// Runtime switches of the ear:: operators (shared by the Python module and the CMake library).
#include <atomic>
#include <tuple>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/limits.h"

namespace ear {

static std::atomic<bool> g_poison{false};
bool poison_outputs() { return g_poison.load(); }

static bool cuda_available() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// (largest CUDA box, most scales): arguments past them run the reference ops on that device
static std::tuple<int64_t, int64_t> cuda_limits() { return {kMaxCudaBox, kMaxScales}; }

static void set_poison(bool on) { g_poison.store(on); }

}  // namespace ear

TORCH_LIBRARY_FRAGMENT(ear, m) {
  m.def("_cuda_available() -> bool", &ear::cuda_available);
  m.def("_cuda_limits() -> (int, int)", &ear::cuda_limits);
  m.def("_set_poison(bool on) -> ()", &ear::set_poison);
}
