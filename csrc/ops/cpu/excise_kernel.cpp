// CPU kernel of ear::excise. Parallel over images; one pass per image computes the
// Q3 threshold, the upsampled mask, the tile means and the composite.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../checks.h"
#include "../common.h"

namespace ear {
namespace {

// Per-image threshold mean + 0.674 * population std, accumulated in double.
float q3_threshold(const float* a, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += a[i];
  const double mean = sum / n;
  double var = 0.0;
  for (int64_t i = 0; i < n; ++i) var += (a[i] - mean) * (a[i] - mean);
  return static_cast<float>(mean) + kQ3Sigma * static_cast<float>(std::sqrt(var / n));
}

template <typename T>
void excise_image(const T* in, T* out, const int64_t* is, const int64_t* os, int C, int H, int W,
                  const float* att, int h, int w, int m, bool hint, float* ratio,
                  std::vector<uint8_t>& mask, std::vector<float>& means) {
  // mask at full resolution (all ones when there is no attention)
  int64_t count = 0;
  if (att == nullptr) {
    std::fill(mask.begin(), mask.end(), uint8_t(1));
    count = int64_t(H) * W;
  } else {
    const float thr = q3_threshold(att, int64_t(h) * w);
    std::vector<int> xs(W);
    for (int x = 0; x < W; ++x) xs[x] = nearest_source(x, w, W);
    for (int y = 0; y < H; ++y) {
      const float* row = att + int64_t(nearest_source(y, h, H)) * w;
      for (int x = 0; x < W; ++x) {
        const uint8_t s = row[xs[x]] > thr ? 1 : 0;
        mask[int64_t(y) * W + x] = s;
        count += s;
      }
    }
  }
  *ratio = static_cast<float>(static_cast<double>(count) / (double(H) * W));
  const int ty_n = (H + m - 1) / m, tx_n = (W + m - 1) / m;
  std::vector<int> tile_col(W);  // x / m, computed once instead of per pixel
  for (int x = 0; x < W; ++x) tile_col[x] = x / m;
  std::vector<double> sums(hint ? tx_n : 0);
  for (int c = 0; c < C; ++c) {
    const T* src = in + c * is[1];
    T* dst = out + c * os[1];
    if (hint) {  // tile means, row by row; partial edge tiles average their in-bounds pixels only
      for (int ty = 0; ty < ty_n; ++ty) {
        std::fill(sums.begin(), sums.end(), 0.0);
        const int y1 = std::min(H, (ty + 1) * m);
        for (int y = ty * m; y < y1; ++y) {
          const T* row = src + y * is[2];
          for (int x = 0; x < W; ++x) sums[tile_col[x]] += static_cast<float>(row[x * is[3]]);
        }
        for (int tx = 0; tx < tx_n; ++tx) {
          const int width = std::min(W, (tx + 1) * m) - tx * m;
          means[int64_t(ty) * tx_n + tx] = static_cast<float>(sums[tx] / (double(y1 - ty * m) * width));
        }
      }
    }
    for (int y = 0; y < H; ++y) {
      const T* row = src + y * is[2];
      T* orow = dst + y * os[2];
      const uint8_t* mrow = mask.data() + int64_t(y) * W;
      const float* trow = hint ? means.data() + int64_t(y / m) * tx_n : nullptr;
      for (int x = 0; x < W; ++x) {
        orow[x * os[3]] = mrow[x] ? static_cast<T>(hint ? trow[tile_col[x]] : 0.f) : row[x * is[3]];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> excise_cpu(const at::Tensor& images, const c10::optional<at::Tensor>& attention,
                                              int64_t m, bool hint) {
  check_excise_args(images, attention, m);
  const int64_t B = images.size(0);
  const int C = images.size(1), H = images.size(2), W = images.size(3);
  at::Tensor out = at::empty_like(images);  // keeps channels_last when given
  at::Tensor ratio = at::empty({B}, images.options().dtype(at::kFloat));
  if (poison_outputs()) {
    out.fill_(std::numeric_limits<float>::quiet_NaN());
    ratio.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  if (B == 0) return {out, ratio};
  at::Tensor att;
  int h = 0, w = 0;
  if (attention.has_value()) {
    att = attention->to(at::kFloat).contiguous();
    h = att.size(1);
    w = att.size(2);
  }
  const int64_t is[4] = {images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const int64_t os[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const int mm = static_cast<int>(std::min<int64_t>(m, std::max(H, W)));  // larger m = one tile
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "excise_cpu", [&] {
    const scalar_t* in = images.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const float* a = att.defined() ? att.data_ptr<float>() : nullptr;
    float* r = ratio.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<uint8_t> mask(int64_t(H) * W);
      std::vector<float> means(int64_t((H + mm - 1) / mm) * ((W + mm - 1) / mm));
      for (int64_t b = b0; b < b1; ++b) {
        excise_image<scalar_t>(in + b * is[0], o + b * os[0], is, os, C, H, W,
                               a ? a + b * int64_t(h) * w : nullptr, h, w, mm, hint, r + b, mask, means);
      }
    });
  });
  return {out, ratio};
}

}  // namespace

TORCH_LIBRARY_IMPL(ear, CPU, m) { m.impl("excise", &excise_cpu); }

}  // namespace ear
