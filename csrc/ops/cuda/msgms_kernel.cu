// CUDA kernel of ear::msgms.
//
//  1. gray_kernel      reads both inputs once (any strides), writes the level-0 gray images;
//  2. pool_kernel      builds the 2^s pyramid levels from level 0 (floor mode);
//  3. gms_tile_kernel  per level, a shared-memory tile with a 2-pixel halo: 3x3 median,
//                      Prewitt magnitude and the GMS distance, written at the level's size;
//  4. box_max_kernel   per 64x32 output tile, the mean-over-scales map is rebuilt in shared
//                      memory from the small levels (bilinear, replicate halo), box-filtered
//                      separably and reduced to the per-image max with one atomic per block.
//                      The full-resolution map is written only when asked for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "../limits.h"
#include "cuda_helpers.cuh"

namespace ear {
namespace {

constexpr int kGmsTileX = 32, kGmsTileY = 8;    // gms_tile_kernel: one thread per output pixel
constexpr int kBoxTileX = 64, kBoxTileY = 32;   // box_max_kernel output tile, 256 threads
constexpr int kMaxBox = kMaxCudaBox;

struct Levels {
  const float* dist[kMaxScales];
  int h[kMaxScales];
  int w[kMaxScales];
};

template <typename T>
__global__ void gray_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t aB, int64_t aC, int64_t aH,
                            int64_t aW, int64_t bB, int64_t bC, int64_t bH, int64_t bW, int64_t total, int C, int H,
                            int W, float* __restrict__ ga, float* __restrict__ gb) {
  EAR_CUDA_KERNEL_LOOP(p, total) {
    const int x = p % W;
    const int y = (p / W) % H;
    const int64_t n = p / (int64_t(W) * H);
    float sa = 0.f, sb = 0.f;
    for (int c = 0; c < C; ++c) {
      sa += static_cast<float>(a[n * aB + c * aC + y * aH + x * aW]);
      sb += static_cast<float>(b[n * bB + c * bC + y * bH + x * bW]);
    }
    ga[p] = sa / C;
    gb[p] = sb / C;
  }
}

// fp32, contiguous NCHW, H*W % 4 == 0: 16-byte loads of 4 neighbouring pixels per channel.
__global__ void gray_kernel_vec4(const float4* __restrict__ a, const float4* __restrict__ b, int64_t total4,
                                 int64_t plane4, int C, float4* __restrict__ ga, float4* __restrict__ gb) {
  EAR_CUDA_KERNEL_LOOP(i, total4) {
    const int64_t n = i / plane4, p = i % plane4;
    float4 sa = make_float4(0.f, 0.f, 0.f, 0.f), sb = sa;
    for (int c = 0; c < C; ++c) {
      const float4 va = __ldg(a + (n * C + c) * plane4 + p);
      const float4 vb = __ldg(b + (n * C + c) * plane4 + p);
      sa.x += va.x; sa.y += va.y; sa.z += va.z; sa.w += va.w;
      sb.x += vb.x; sb.y += vb.y; sb.z += vb.z; sb.w += vb.w;
    }
    const float inv_c = static_cast<float>(C);
    ga[i] = make_float4(sa.x / inv_c, sa.y / inv_c, sa.z / inv_c, sa.w / inv_c);
    gb[i] = make_float4(sb.x / inv_c, sb.y / inv_c, sb.z / inv_c, sb.w / inv_c);
  }
}

bool vec4_ok(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() && (t.size(2) * t.size(3)) % 4 == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

__global__ void pool_kernel(const float* __restrict__ ga, const float* __restrict__ gb, int64_t total, int H, int W,
                            int k, int h, int w, float* __restrict__ la, float* __restrict__ lb) {
  EAR_CUDA_KERNEL_LOOP(p, total) {
    const int x = p % w;
    const int y = (p / w) % h;
    const int64_t n = p / (int64_t(w) * h);
    const float* pa = ga + n * H * int64_t(W);
    const float* pb = gb + n * H * int64_t(W);
    float sa = 0.f, sb = 0.f;
    for (int dy = 0; dy < k; ++dy)
      for (int dx = 0; dx < k; ++dx) {
        const int64_t idx = int64_t(y * k + dy) * W + (x * k + dx);
        sa += pa[idx];
        sb += pb[idx];
      }
    const float inv = 1.f / float(k * k);
    la[p] = sa * inv;
    lb[p] = sb * inv;
  }
}

// raw tile: rows y0-2 .. y0+TY+1 (clamped), median tile: positions y0-1 .. y0+TY (clamped)
__global__ void gms_tile_kernel(const float* __restrict__ la, const float* __restrict__ lb, int h, int w, bool median,
                                float c, int64_t image_offset, float* __restrict__ dist) {
  constexpr int RY = kGmsTileY + 4, RX = kGmsTileX + 4, MY = kGmsTileY + 2, MX = kGmsTileX + 2;
  __shared__ float ra[RY][RX + 1], rb[RY][RX + 1];
  __shared__ float ma[MY][MX + 1], mb[MY][MX + 1];
  const int64_t n = image_offset + blockIdx.z;
  const int x0 = blockIdx.x * kGmsTileX, y0 = blockIdx.y * kGmsTileY;
  const float* A = la + n * int64_t(h) * w;
  const float* Bp = lb + n * int64_t(h) * w;
  const int tid = threadIdx.y * kGmsTileX + threadIdx.x;
  for (int i = tid; i < RY * RX; i += kGmsTileX * kGmsTileY) {
    const int ry = i / RX, rx = i % RX;
    const int64_t idx = int64_t(clamp_index(y0 - 2 + ry, 0, h - 1)) * w + clamp_index(x0 - 2 + rx, 0, w - 1);
    ra[ry][rx] = A[idx];
    rb[ry][rx] = Bp[idx];
  }
  __syncthreads();
  // raw smem holds the value of global row g at index g - (y0 - 2) for every g the filters need.
  if (median) {
    for (int i = tid; i < MY * MX; i += kGmsTileX * kGmsTileY) {
      const int my = i / MX, mx = i % MX;
      const int cy = clamp_index(y0 - 1 + my, 0, h - 1), cx = clamp_index(x0 - 1 + mx, 0, w - 1);
      float na[9], nb[9];
      for (int dy = -1, k = 0; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx, ++k) {
          const int ry = clamp_index(cy + dy, 0, h - 1) - (y0 - 2);
          const int rx = clamp_index(cx + dx, 0, w - 1) - (x0 - 2);
          na[k] = ra[ry][rx];
          nb[k] = rb[ry][rx];
        }
      ma[my][mx] = median9(na[0], na[1], na[2], na[3], na[4], na[5], na[6], na[7], na[8]);
      mb[my][mx] = median9(nb[0], nb[1], nb[2], nb[3], nb[4], nb[5], nb[6], nb[7], nb[8]);
    }
    __syncthreads();
  }
  const int y = y0 + threadIdx.y, x = x0 + threadIdx.x;
  if (y >= h || x >= w) return;
  float na[9], nb[9];
  for (int dy = -1, k = 0; dy <= 1; ++dy)
    for (int dx = -1; dx <= 1; ++dx, ++k) {
      const int gy = clamp_index(y + dy, 0, h - 1), gx = clamp_index(x + dx, 0, w - 1);
      if (median) {
        na[k] = ma[gy - (y0 - 1)][gx - (x0 - 1)];
        nb[k] = mb[gy - (y0 - 1)][gx - (x0 - 1)];
      } else {
        na[k] = ra[gy - (y0 - 2)][gx - (x0 - 2)];
        nb[k] = rb[gy - (y0 - 2)][gx - (x0 - 2)];
      }
    }
  dist[n * int64_t(h) * w + int64_t(y) * w + x] = gms_distance(prewitt_magnitude(na), prewitt_magnitude(nb), c);
}

__device__ __forceinline__ float mean_over_scales(const Levels& lv, int S, int64_t n, int y, int x, int H, int W) {
  float total = 0.f;
  for (int s = 0; s < S; ++s) {
    const int h = lv.h[s], w = lv.w[s];
    const float* d = lv.dist[s] + n * int64_t(h) * w;
    const BilinearTap ty = bilinear_source(y, h, H);
    const BilinearTap tx = bilinear_source(x, w, W);
    const float* d0 = d + int64_t(ty.i0) * w;
    const float* d1 = d + int64_t(ty.i1) * w;
    total += ty.w0 * (tx.w0 * d0[tx.i0] + tx.w1 * d0[tx.i1]) + ty.w1 * (tx.w0 * d1[tx.i0] + tx.w1 * d1[tx.i1]);
  }
  return total / static_cast<float>(S);
}

__global__ void box_max_kernel(Levels lv, int S, int H, int W, int r, int64_t image_offset, float* __restrict__ score,
                               float* __restrict__ map_out) {
  extern __shared__ float smem[];
  const int RY = kBoxTileY + 2 * r, RX = kBoxTileX + 2 * r;
  float* mt = smem;                 // [RY][RX]  mean-over-scales map with replicate halo
  float* hs = smem + RY * RX;       // [RY][kBoxTileX] horizontal box sums
  const int64_t n = image_offset + blockIdx.z;
  const int x0 = blockIdx.x * kBoxTileX, y0 = blockIdx.y * kBoxTileY;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int i = tid; i < RY * RX; i += nt) {
    const int gy = clamp_index(y0 - r + i / RX, 0, H - 1), gx = clamp_index(x0 - r + i % RX, 0, W - 1);
    mt[i] = mean_over_scales(lv, S, n, gy, gx, H, W);
  }
  __syncthreads();
  for (int i = tid; i < RY * kBoxTileX; i += nt) {
    const int ry = i / kBoxTileX, tx = i % kBoxTileX;
    float acc = 0.f;
    for (int dx = 0; dx <= 2 * r; ++dx) acc += mt[ry * RX + tx + dx];
    hs[i] = acc;
  }
  __syncthreads();
  const float inv = 1.f / float((2 * r + 1) * (2 * r + 1));
  float best = -INFINITY;
  for (int i = tid; i < kBoxTileY * kBoxTileX; i += nt) {
    const int ty = i / kBoxTileX, tx = i % kBoxTileX;
    const int y = y0 + ty, x = x0 + tx;
    if (y >= H || x >= W) continue;
    float acc = 0.f;
    for (int dy = 0; dy <= 2 * r; ++dy) acc += hs[(ty + dy) * kBoxTileX + tx];
    const float v = acc * inv;
    best = nan_max(best, v);
    if (map_out != nullptr) map_out[n * int64_t(H) * W + int64_t(y) * W + x] = v;
  }
  __shared__ float warp_best[32];
  best = warp_max(best);
  if ((tid & 31) == 0) warp_best[tid >> 5] = best;
  __syncthreads();
  if (tid < 32) {
    best = tid < (nt + 31) / 32 ? warp_best[tid] : -INFINITY;
    best = warp_max(best);
    if (tid == 0) atomic_max_float(score + n, best);
  }
}

std::tuple<at::Tensor, at::Tensor> msgms_cuda(const at::Tensor& images, const at::Tensor& recon, int64_t scales,
                                              double c, bool median, int64_t box, bool want_map) {
  check_msgms_args(images, recon, scales, box);
  TORCH_CHECK(box <= kMaxBox, "msgms (CUDA): box filter size must be <= ", kMaxBox, ", got ", box);
  c10::cuda::CUDAGuard guard(images.device());
  const int64_t B = images.size(0);
  const int C = images.size(1), H = images.size(2), W = images.size(3), S = scales;
  const auto fopts = images.options().dtype(at::kFloat);
  at::Tensor score = at::empty({B}, fopts);
  at::Tensor dmap = want_map ? at::empty({B, 1, H, W}, fopts) : at::empty({0}, fopts);
  if (poison_outputs()) dmap.fill_(std::numeric_limits<float>::quiet_NaN());
  if (B == 0) return {score, dmap};
  score.fill_(-std::numeric_limits<float>::infinity());  // identity of the atomic max
  at::Tensor img = images, rec = recon;
  if (img.scalar_type() != rec.scalar_type()) {
    img = img.to(at::kFloat);
    rec = rec.to(at::kFloat);
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t total = B * H * W;
  at::Tensor gray = at::empty({2, B, H, W}, fopts);
  float* ga = gray.data_ptr<float>();
  float* gb = ga + total;
  if (vec4_ok(img) && vec4_ok(rec)) {
    const int64_t total4 = total / 4;
    gray_kernel_vec4<<<blocks_for(total4), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(img.data_ptr<float>()), reinterpret_cast<const float4*>(rec.data_ptr<float>()),
        total4, int64_t(H) * W / 4, C, reinterpret_cast<float4*>(ga), reinterpret_cast<float4*>(gb));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "msgms_gray", [&] {
      gray_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          img.data_ptr<scalar_t>(), rec.data_ptr<scalar_t>(), img.stride(0), img.stride(1), img.stride(2),
          img.stride(3), rec.stride(0), rec.stride(1), rec.stride(2), rec.stride(3), total, C, H, W, ga, gb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  Levels lv;
  std::vector<at::Tensor> keep;
  for (int s = 0; s < S; ++s) {
    const int h = H >> s, w = W >> s;
    const float* la = ga;
    const float* lb = gb;
    if (s > 0) {
      at::Tensor lvl = at::empty({2, B, h, w}, fopts);
      keep.push_back(lvl);
      const int64_t n = B * h * int64_t(w);
      pool_kernel<<<blocks_for(n), kThreads, 0, stream>>>(ga, gb, n, H, W, 1 << s, h, w, lvl.data_ptr<float>(),
                                                           lvl.data_ptr<float>() + n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      la = lvl.data_ptr<float>();
      lb = la + n;
    }
    at::Tensor dist = at::empty({B, h, w}, fopts);
    keep.push_back(dist);
    for (int64_t off = 0; off < B; off += 65535) {
      const dim3 grid((w + kGmsTileX - 1) / kGmsTileX, (h + kGmsTileY - 1) / kGmsTileY,
                      static_cast<unsigned>(std::min<int64_t>(65535, B - off)));
      gms_tile_kernel<<<grid, dim3(kGmsTileX, kGmsTileY), 0, stream>>>(la, lb, h, w, median, static_cast<float>(c),
                                                                        off, dist.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    lv.dist[s] = dist.data_ptr<float>();
    lv.h[s] = h;
    lv.w[s] = w;
  }
  const int r = box > 1 ? static_cast<int>(box / 2) : 0;
  const size_t smem = sizeof(float) * (size_t(kBoxTileY + 2 * r) * (kBoxTileX + 2 * r) +
                                       size_t(kBoxTileY + 2 * r) * kBoxTileX);
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(box_max_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  for (int64_t off = 0; off < B; off += 65535) {
    const dim3 grid((W + kBoxTileX - 1) / kBoxTileX, (H + kBoxTileY - 1) / kBoxTileY,
                    static_cast<unsigned>(std::min<int64_t>(65535, B - off)));
    box_max_kernel<<<grid, kThreads, smem, stream>>>(lv, S, H, W, r, off, score.data_ptr<float>(),
                                                     want_map ? dmap.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {score, dmap};
}

}  // namespace

TORCH_LIBRARY_IMPL(ear, CUDA, m) { m.impl("msgms", &msgms_cuda); }

}  // namespace ear
