// CUDA kernel of ear::excise: per-image Q3 threshold, tile means, then one pass that
// upsamples the mask (nearest), composes the image and counts masked pixels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "../common.h"
#include "cuda_helpers.cuh"

namespace ear {
namespace {

// One block per image: two-pass mean / population variance in double.
__global__ void q3_threshold_kernel(const float* __restrict__ att, int64_t n, float* __restrict__ thr) {
  __shared__ double partial[kThreads];
  const float* a = att + blockIdx.x * n;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += a[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) partial[threadIdx.x] += partial[threadIdx.x + step];
    __syncthreads();
  }
  const double mean = partial[0] / n;
  __syncthreads();
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += (a[i] - mean) * (a[i] - mean);
  partial[threadIdx.x] = v;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) partial[threadIdx.x] += partial[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) thr[blockIdx.x] = static_cast<float>(mean) + kQ3Sigma * static_cast<float>(sqrt(partial[0] / n));
}

// Tile means; LANES threads cooperate on one tile (1 for small tiles, a warp for large ones).
template <typename T, int LANES>
__global__ void tile_mean_kernel(const T* __restrict__ in, int64_t sB, int64_t sC, int64_t sH, int64_t sW, int64_t tiles,
                                 int C, int H, int W, int m, int tyn, int txn, float* __restrict__ means) {
  EAR_CUDA_KERNEL_LOOP(gid, tiles * LANES) {
    const int64_t tile = gid / LANES;
    const int lane = static_cast<int>(gid % LANES);
    const int tx = tile % txn;
    const int ty = (tile / txn) % tyn;
    const int c = (tile / (int64_t(txn) * tyn)) % C;
    const int64_t b = tile / (int64_t(txn) * tyn * C);
    const int y0 = ty * m, x0 = tx * m;
    const int th = min(H, y0 + m) - y0, tw = min(W, x0 + m) - x0;
    const T* src = in + b * sB + c * sC;
    float sum = 0.f;
    for (int e = lane; e < th * tw; e += LANES) {
      const int y = y0 + e / tw, x = x0 + e % tw;
      sum += static_cast<float>(src[y * sH + x * sW]);
    }
    if (LANES > 1) sum = warp_sum(sum);
    if (lane == 0) means[tile] = sum / static_cast<float>(th * tw);
  }
}

template <typename T>
__global__ void compose_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t iB, int64_t iC, int64_t iH,
                               int64_t iW, int64_t oB, int64_t oC, int64_t oH, int64_t oW, int64_t total, int C,
                               int H, int W, const float* __restrict__ att, const float* __restrict__ thr, int h,
                               int w, const float* __restrict__ means, int tyn, int txn, int m, bool hint,
                               int* __restrict__ counts) {
  EAR_CUDA_KERNEL_LOOP(p, total) {
    const int x = p % W;
    const int y = (p / W) % H;
    const int64_t b = p / (int64_t(W) * H);
    bool s = true;
    if (att != nullptr) {
      const float v = att[(b * h + nearest_source(y, h, H)) * w + nearest_source(x, w, W)];
      s = v > thr[b];
    }
    {  // warp-aggregated count of masked pixels per image (a warp may straddle two images)
      const unsigned active = __activemask();
      const unsigned same = __match_any_sync(active, static_cast<unsigned long long>(b));
      const unsigned hits = __ballot_sync(active, s) & same;
      if ((threadIdx.x & 31) == __ffs(same) - 1 && hits) atomicAdd(counts + b, __popc(hits));
    }
    const int64_t tile = (int64_t(y / m) * txn + x / m);
    for (int c = 0; c < C; ++c) {
      float v;
      if (s) {
        v = hint ? means[((b * C + c) * tyn) * txn + tile] : 0.f;
      } else {
        v = static_cast<float>(in[b * iB + c * iC + y * iH + x * iW]);
      }
      out[b * oB + c * oC + y * oH + x * oW] = static_cast<T>(v);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> excise_cuda(const at::Tensor& images, const c10::optional<at::Tensor>& attention,
                                               int64_t m, bool hint) {
  check_excise_args(images, attention, m);
  c10::cuda::CUDAGuard guard(images.device());
  const int64_t B = images.size(0);
  const int C = images.size(1), H = images.size(2), W = images.size(3);
  at::Tensor out = at::empty_like(images);
  at::Tensor ratio = at::empty({B}, images.options().dtype(at::kFloat));
  if (poison_outputs()) {
    out.fill_(std::numeric_limits<float>::quiet_NaN());
    ratio.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  if (B == 0) return {out, ratio};
  auto stream = at::cuda::getCurrentCUDAStream();
  const int mm = static_cast<int>(std::min<int64_t>(m, std::max(H, W)));
  const int tyn = (H + mm - 1) / mm, txn = (W + mm - 1) / mm;
  at::Tensor att, thr;
  int h = 0, w = 0;
  if (attention.has_value()) {
    att = attention->to(at::kFloat).contiguous();
    h = att.size(1);
    w = att.size(2);
    thr = at::empty({B}, att.options());
    q3_threshold_kernel<<<B, kThreads, 0, stream>>>(att.data_ptr<float>(), int64_t(h) * w, thr.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor means = at::empty({hint ? B * C * tyn * txn : 1}, images.options().dtype(at::kFloat));
  at::Tensor counts = at::zeros({B}, images.options().dtype(at::kInt));
  const int64_t total = B * H * W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "excise_cuda", [&] {
    const scalar_t* in = images.data_ptr<scalar_t>();
    if (hint) {
      const int64_t tiles = B * C * tyn * txn;
      if (mm * mm <= 64) {
        tile_mean_kernel<scalar_t, 1><<<blocks_for(tiles), kThreads, 0, stream>>>(
            in, images.stride(0), images.stride(1), images.stride(2), images.stride(3), tiles, C, H, W, mm, tyn, txn,
            means.data_ptr<float>());
      } else {
        tile_mean_kernel<scalar_t, 32><<<blocks_for(tiles * 32), kThreads, 0, stream>>>(
            in, images.stride(0), images.stride(1), images.stride(2), images.stride(3), tiles, C, H, W, mm, tyn, txn,
            means.data_ptr<float>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    compose_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        in, out.data_ptr<scalar_t>(), images.stride(0), images.stride(1), images.stride(2), images.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3), total, C, H, W,
        att.defined() ? att.data_ptr<float>() : nullptr, thr.defined() ? thr.data_ptr<float>() : nullptr, h, w,
        means.data_ptr<float>(), tyn, txn, mm, hint, counts.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  ratio.copy_(counts.to(at::kFloat).div_(static_cast<double>(H) * W));
  return {out, ratio};
}

}  // namespace

TORCH_LIBRARY_IMPL(ear, CUDA, m) { m.impl("excise", &excise_cuda); }

}  // namespace ear
