// Runtime switches of the ear:: operators (shared by the Python module and the CMake library).
#include <atomic>
#include <torch/library.h>

#include "ops/checks.h"

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

static void set_poison(bool on) { g_poison.store(on); }

}  // namespace ear

TORCH_LIBRARY_FRAGMENT(ear, m) {
  m.def("_cuda_available() -> bool", &ear::cuda_available);
  m.def("_set_poison(bool on) -> ()", &ear::set_poison);
}
