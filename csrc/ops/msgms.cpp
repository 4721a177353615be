// Schema of ear::msgms: multi-scale gradient-magnitude-similarity score, all stages fused.
// Every argument is explicit: the defaults (scales, the GMS constant c, the box) are defined once, in
// Python (ear_stream/model/config.py GMS_C; ear_stream.model.ops.msgms), which always passes them all.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ear, m) {
  m.def(
      "msgms(Tensor images, Tensor recon, int scales, float c, bool median, int box, bool want_map) "
      "-> (Tensor, Tensor)");
}
