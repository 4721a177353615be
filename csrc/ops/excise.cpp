// Schema of ear::excise: Q3 threshold + nearest upsampling + tile means + masked composition.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ear, m) {
  m.def("excise(Tensor images, Tensor? attention, int m, bool hint=True) -> (Tensor, Tensor)");
}
