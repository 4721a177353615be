// Index rules and small filters shared by the CPU and CUDA kernels.
//
// Every function here reproduces one PyTorch rule that the Python reference
// (ear_stream/model/reference.py) relies on, so both backends agree with it to
// float rounding: the nearest-neighbour source index, the bilinear
// (align_corners=False) source index and weights, the 3x3 median and the
// Prewitt gradient magnitude.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EAR_HD __host__ __device__ __forceinline__
#else
#define EAR_HD inline
#endif

namespace ear {

constexpr float kQ3Sigma = 0.674f;   // mean + 0.674 std = upper quartile
constexpr float kGradEps = 1e-12f;   // under the gradient-magnitude square root

EAR_HD int clamp_index(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Max that keeps NaN, like torch.amax: once a NaN is seen it wins. fmaxf / std::max drop
// NaN, and a diverged model (NaN or inf reconstruction, inf/inf = NaN in the GMS) would
// then score finite and pass a part as good. Scores must fail closed.
EAR_HD float nan_max(float best, float v) { return (best != best) ? best : ((v != v || v > best) ? v : best); }

// Q3 rule (docs/design.md, "Excision"): threshold = mean + 0.674 * population std, mean and variance
// accumulated in double, then combined in float; S = A > threshold (strict). For constant
// attention (std = 0) the double mean is exact, so threshold == A everywhere and S = 0:
// nothing stands out, nothing is excised. The reference computes it the same way.

// PyTorch's `nearest` rule: src = min(floor(dst * in / out), in - 1), with a float scale.
EAR_HD int nearest_source(int dst, int in, int out) {
  if (in == out) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const int src = static_cast<int>(floorf(static_cast<float>(dst) * scale));
  return src < in - 1 ? src : in - 1;
}

// PyTorch's bilinear, align_corners=False: src = max(scale * (dst + 0.5) - 0.5, 0).
struct BilinearTap {
  int i0;
  int i1;
  float w0;
  float w1;
};

EAR_HD BilinearTap bilinear_source(int dst, int in, int out) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  BilinearTap t;
  t.i0 = static_cast<int>(src);
  t.i1 = t.i0 + ((t.i0 < in - 1) ? 1 : 0);
  t.w1 = src - static_cast<float>(t.i0);
  t.w0 = 1.f - t.w1;
  return t;
}

// Compare-exchange written with selects so that compilers vectorise it (min/max instructions).
EAR_HD void sort2(float& a, float& b) {
  const float lo = a < b ? a : b;
  b = a < b ? b : a;
  a = lo;
}

// Exact median of 9 values (selection network of 19 compare-exchanges).
EAR_HD float median9(float p0, float p1, float p2, float p3, float p4, float p5, float p6, float p7, float p8) {
  sort2(p1, p2); sort2(p4, p5); sort2(p7, p8);
  sort2(p0, p1); sort2(p3, p4); sort2(p6, p7);
  sort2(p1, p2); sort2(p4, p5); sort2(p7, p8);
  sort2(p0, p3); sort2(p5, p8); sort2(p4, p7);
  sort2(p3, p6); sort2(p1, p4); sort2(p2, p5);
  sort2(p4, p7); sort2(p4, p2); sort2(p6, p4);
  sort2(p4, p2);
  return p4;
}

// Prewitt magnitude from a 3x3 neighbourhood (row-major n[0..8]); kernels divided by 3.
EAR_HD float prewitt_magnitude(const float* n) {
  const float gx = ((n[0] - n[2]) + (n[3] - n[5]) + (n[6] - n[8])) / 3.f;
  const float gy = ((n[0] - n[6]) + (n[1] - n[7]) + (n[2] - n[8])) / 3.f;
  return sqrtf(gx * gx + gy * gy + kGradEps);
}

// 1 - GMS between two gradient magnitudes.
EAR_HD float gms_distance(float ga, float gb, float c) {
  return 1.f - (2.f * ga * gb + c) / (ga * ga + gb * gb + c);
}

}  // namespace ear
