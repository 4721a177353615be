// Limits of the msgms kernels, exported to Python by the op library (torch.ops.ear._cuda_limits in
// csrc/runtime.cpp), so that ear_stream.model.ops routes larger arguments to the reference ops instead of
// copying the numbers by hand.
#pragma once

namespace ear {

// Largest box filter the CUDA kernel keeps in shared memory (an odd side; the tile is box + halo).
constexpr int kMaxCudaBox = 129;
// Most MSGMS scales the kernels take (the CUDA kernel holds one level pointer per scale in a fixed-size
// argument; a 2^15 pyramid is far past any image anyway).
constexpr int kMaxScales = 16;

}  // namespace ear
