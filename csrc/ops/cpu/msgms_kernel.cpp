// CPU kernel of ear::msgms. Per image: gray pyramid -> (median) -> Prewitt -> GMS distance
// per scale, bilinear upsampling and averaging row by row, separable box filter, running max.
// Only small per-image buffers are allocated; the full-resolution map is written only when asked.
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

// Copy an h x w image into an (h+2) x (w+2) buffer with a one-pixel replicate border,
// so the 3x3 filters below run branch-free (and vectorise) over the interior.
void pad_replicate(const float* __restrict__ src, int h, int w, float* __restrict__ dst) {
  const int pw = w + 2;
  for (int y = -1; y <= h; ++y) {
    const float* row = src + int64_t(clamp_index(y, 0, h - 1)) * w;
    float* out = dst + int64_t(y + 1) * pw;
    out[0] = row[0];
    for (int x = 0; x < w; ++x) out[x + 1] = row[x];
    out[w + 1] = row[w - 1];
  }
}

// Apply a 3x3 filter over the interior of a padded buffer; `f` gets the three rows at x - 1.
template <typename Filter>
void filter3x3_padded(const float* __restrict__ p, int h, int w, float* __restrict__ out, Filter f) {
  const int pw = w + 2;
  for (int y = 0; y < h; ++y) {
    const float* r0 = p + int64_t(y) * pw;
    const float* r1 = r0 + pw;
    const float* r2 = r1 + pw;
    float* o = out + int64_t(y) * w;
    for (int x = 0; x < w; ++x) o[x] = f(r0 + x, r1 + x, r2 + x);
  }
}

// Function objects (not pointers) so that each filter is inlined into its loop and vectorised.
struct Median3x3 {
  float operator()(const float* a, const float* b, const float* c) const {
    return median9(a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2]);
  }
};

struct Prewitt3x3 {
  float operator()(const float* a, const float* b, const float* c) const {
    const float n[9] = {a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2]};
    return prewitt_magnitude(n);
  }
};

// Gradient magnitude of one gray level (optionally median-filtered first), replicate borders.
void level_gradient(const float* g, int h, int w, bool median, std::vector<float>& pad, std::vector<float>& tmp,
                    float* out) {
  pad_replicate(g, h, w, pad.data());
  if (median) {
    filter3x3_padded(pad.data(), h, w, tmp.data(), Median3x3{});
    pad_replicate(tmp.data(), h, w, pad.data());
  }
  filter3x3_padded(pad.data(), h, w, out, Prewitt3x3{});
}

// Distance map of one scale from two gray levels (h x w).
void gms_level(const float* a, const float* b, int h, int w, bool median, float c, float* dist,
               std::vector<float>& pad, std::vector<float>& tmp, std::vector<float>& grad_a) {
  level_gradient(a, h, w, median, pad, tmp, grad_a.data());
  level_gradient(b, h, w, median, pad, tmp, dist);  // gradient of b, overwritten below
  const int64_t n = int64_t(h) * w;
  for (int64_t i = 0; i < n; ++i) dist[i] = gms_distance(grad_a[i], dist[i], c);
}

struct Workspace {
  std::vector<float> gray_a, gray_b, lvl_a, lvl_b, pad, tmp, grad, mean_map, row_sum, row_pad;
  std::vector<std::vector<float>> dist;
};

template <typename T>
float msgms_image(const T* img, const T* rec, const int64_t* is, const int64_t* rs, int C, int H, int W, int S,
                  float c, bool median, int box, float* map_out, Workspace& ws) {
  const int64_t HW = int64_t(H) * W;
  // gray = channel mean, in float
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      float sa = 0.f, sb = 0.f;
      for (int ch = 0; ch < C; ++ch) {
        sa += static_cast<float>(img[ch * is[1] + y * is[2] + x * is[3]]);
        sb += static_cast<float>(rec[ch * rs[1] + y * rs[2] + x * rs[3]]);
      }
      ws.gray_a[int64_t(y) * W + x] = sa / C;
      ws.gray_b[int64_t(y) * W + x] = sb / C;
    }
  // per-scale distance maps at their own resolution
  for (int s = 0; s < S; ++s) {
    const int k = 1 << s, h = H >> s, w = W >> s;
    const float* a = ws.gray_a.data();
    const float* b = ws.gray_b.data();
    if (s > 0) {  // 2^s x 2^s average pooling, floor mode
      const float inv = 1.f / float(k * k);
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          float sa = 0.f, sb = 0.f;
          for (int dy = 0; dy < k; ++dy)
            for (int dx = 0; dx < k; ++dx) {
              const int64_t idx = int64_t(y * k + dy) * W + (x * k + dx);
              sa += ws.gray_a[idx];
              sb += ws.gray_b[idx];
            }
          ws.lvl_a[int64_t(y) * w + x] = sa * inv;
          ws.lvl_b[int64_t(y) * w + x] = sb * inv;
        }
      a = ws.lvl_a.data();
      b = ws.lvl_b.data();
    }
    gms_level(a, b, h, w, median, c, ws.dist[s].data(), ws.pad, ws.tmp, ws.grad);
  }
  // mean over scales of the bilinearly upsampled maps
  std::vector<BilinearTap> xt(int64_t(S) * W);
  for (int s = 0; s < S; ++s)
    for (int x = 0; x < W; ++x) xt[int64_t(s) * W + x] = bilinear_source(x, W >> s, W);
  for (int y = 0; y < H; ++y) {
    float* row = ws.mean_map.data() + int64_t(y) * W;
    for (int x = 0; x < W; ++x) row[x] = 0.f;
    for (int s = 0; s < S; ++s) {
      const int h = H >> s, w = W >> s;
      const BilinearTap ty = bilinear_source(y, h, H);
      const float* d0 = ws.dist[s].data() + int64_t(ty.i0) * w;
      const float* d1 = ws.dist[s].data() + int64_t(ty.i1) * w;
      for (int x = 0; x < W; ++x) {
        const BilinearTap& tx = xt[int64_t(s) * W + x];
        row[x] += ty.w0 * (tx.w0 * d0[tx.i0] + tx.w1 * d0[tx.i1]) + ty.w1 * (tx.w0 * d1[tx.i0] + tx.w1 * d1[tx.i1]);
      }
    }
    for (int x = 0; x < W; ++x) row[x] /= static_cast<float>(S);
  }
  // box filter (replicate padding): horizontal sums, then vertical sums; track the max
  float best = -std::numeric_limits<float>::infinity();
  if (box <= 1) {
    for (int64_t i = 0; i < HW; ++i) {
      best = nan_max(best, ws.mean_map[i]);
      if (map_out) map_out[i] = ws.mean_map[i];
    }
    return best;
  }
  const int r = box / 2;
  const float inv = 1.f / float(box * box);
  float* rp = ws.row_pad.data();
  for (int y = 0; y < H; ++y) {
    const float* row = ws.mean_map.data() + int64_t(y) * W;
    float* hs = ws.row_sum.data() + int64_t(y) * W;
    for (int x = -r; x < W + r; ++x) rp[x + r] = row[clamp_index(x, 0, W - 1)];
    for (int x = 0; x < W; ++x) hs[x] = 0.f;
    for (int d = 0; d <= 2 * r; ++d)
      for (int x = 0; x < W; ++x) hs[x] += rp[x + d];
  }
  std::vector<float> col(W);
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) col[x] = 0.f;
    for (int dy = -r; dy <= r; ++dy) {
      const float* hs = ws.row_sum.data() + int64_t(clamp_index(y + dy, 0, H - 1)) * W;
      for (int x = 0; x < W; ++x) col[x] += hs[x];
    }
    for (int x = 0; x < W; ++x) {
      const float v = col[x] * inv;
      best = nan_max(best, v);
      if (map_out) map_out[int64_t(y) * W + x] = v;
    }
  }
  return best;
}

std::tuple<at::Tensor, at::Tensor> msgms_cpu(const at::Tensor& images, const at::Tensor& recon, int64_t scales,
                                             double c, bool median, int64_t box, bool want_map) {
  check_msgms_args(images, recon, scales, box);
  const int64_t B = images.size(0);
  const int C = images.size(1), H = images.size(2), W = images.size(3), S = scales;
  const auto fopts = images.options().dtype(at::kFloat);
  at::Tensor score = at::empty({B}, fopts);
  at::Tensor dmap = want_map ? at::empty({B, 1, H, W}, fopts) : at::empty({0}, fopts);
  if (poison_outputs()) {
    score.fill_(std::numeric_limits<float>::quiet_NaN());
    dmap.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  if (B == 0) return {score, dmap};
  at::Tensor img = images, rec = recon;
  if (img.scalar_type() != rec.scalar_type()) {  // mixed precision: compare both in float
    img = img.to(at::kFloat);
    rec = rec.to(at::kFloat);
  }
  const int64_t is[4] = {img.stride(0), img.stride(1), img.stride(2), img.stride(3)};
  const int64_t rs[4] = {rec.stride(0), rec.stride(1), rec.stride(2), rec.stride(3)};
  const int64_t HW = int64_t(H) * W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "msgms_cpu", [&] {
    const scalar_t* a = img.data_ptr<scalar_t>();
    const scalar_t* b = rec.data_ptr<scalar_t>();
    float* sc = score.data_ptr<float>();
    float* mp = want_map ? dmap.data_ptr<float>() : nullptr;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      Workspace ws;
      ws.gray_a.resize(HW);
      ws.gray_b.resize(HW);
      ws.lvl_a.resize(HW / 4 + 1);
      ws.lvl_b.resize(HW / 4 + 1);
      ws.pad.resize(int64_t(H + 2) * (W + 2));
      ws.tmp.resize(HW);
      ws.grad.resize(HW);
      ws.row_pad.resize(W + box);
      ws.mean_map.resize(HW);
      ws.row_sum.resize(box > 1 ? HW : 0);
      ws.dist.resize(S);
      for (int s = 0; s < S; ++s) ws.dist[s].resize(int64_t(H >> s) * (W >> s));
      for (int64_t i = b0; i < b1; ++i) {
        sc[i] = msgms_image<scalar_t>(a + i * is[0], b + i * rs[0], is, rs, C, H, W, S, static_cast<float>(c),
                                      median, static_cast<int>(box), mp ? mp + i * HW : nullptr, ws);
      }
    });
  });
  return {score, dmap};
}

}  // namespace

TORCH_LIBRARY_IMPL(ear, CPU, m) { m.impl("msgms", &msgms_cpu); }

}  // namespace ear
