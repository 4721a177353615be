// Argument checks shared by every backend: clear errors, never a crash.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "limits.h"

namespace ear {

inline void check_excise_args(const at::Tensor& images, const c10::optional<at::Tensor>& attention, int64_t m) {
  TORCH_CHECK(images.dim() == 4, "excise: images must have shape [B, C, H, W], got rank ", images.dim());
  TORCH_CHECK(at::isFloatingType(images.scalar_type()), "excise: images must be floating point, got ",
              images.scalar_type());
  TORCH_CHECK(images.size(1) >= 1 && images.size(2) >= 1 && images.size(3) >= 1,
              "excise: images must have C, H, W >= 1, got ", images.sizes());
  TORCH_CHECK(m >= 1, "excise: mosaic scale m must be >= 1, got ", m);
  if (attention.has_value()) {
    const at::Tensor& a = *attention;
    TORCH_CHECK(a.dim() == 3, "excise: attention must have shape [B, h, w], got rank ", a.dim());
    TORCH_CHECK(a.size(0) == images.size(0), "excise: attention batch ", a.size(0),
                " does not match images batch ", images.size(0));
    TORCH_CHECK(a.size(1) >= 1 && a.size(2) >= 1, "excise: attention must have h, w >= 1, got ", a.sizes());
    TORCH_CHECK(a.device() == images.device(), "excise: attention and images must be on the same device");
  }
}

inline void check_msgms_args(const at::Tensor& images, const at::Tensor& recon, int64_t scales, int64_t box) {
  TORCH_CHECK(images.dim() == 4, "msgms: images must have shape [B, C, H, W], got rank ", images.dim());
  TORCH_CHECK(images.sizes() == recon.sizes(), "msgms: images ", images.sizes(), " and recon ", recon.sizes(),
              " must have the same shape");
  TORCH_CHECK(at::isFloatingType(images.scalar_type()) && at::isFloatingType(recon.scalar_type()),
              "msgms: images and recon must be floating point");
  TORCH_CHECK(images.device() == recon.device(), "msgms: images and recon must be on the same device");
  TORCH_CHECK(images.size(1) >= 1 && images.size(2) >= 1 && images.size(3) >= 1,
              "msgms: images must have C, H, W >= 1, got ", images.sizes());
  TORCH_CHECK(scales >= 1 && scales <= kMaxScales, "msgms: scales must be in [1, ", kMaxScales, "], got ", scales);
  const int64_t smallest = int64_t(1) << (scales - 1);
  TORCH_CHECK(images.size(0) == 0 || (images.size(2) >= smallest && images.size(3) >= smallest),
              "msgms: image ", images.size(2), "x", images.size(3), " is too small for ", scales, " scales");
  TORCH_CHECK(box <= 1 || box % 2 == 1, "msgms: box filter size must be odd (or <= 1 to disable), got ", box);
}

// Debug switch: fill outputs with NaN before a kernel writes them, so that tests catch unwritten elements.
bool poison_outputs();

}  // namespace ear
