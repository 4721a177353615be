// Schema of ear::msgms: multi-scale gradient-magnitude-similarity score, all stages fused.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ear, m) {
  m.def(
      "msgms(Tensor images, Tensor recon, int scales=3, float c=0.0026, bool median=True, int box=21, "
      "bool want_map=False) -> (Tensor, Tensor)");
}
