"""Plain-PyTorch reference of every EAR operator: the definition of the numerics.

Everything here follows docs/design.md ("Numerics") literally and favours clarity over speed. The
fused C++/CUDA operators in ``csrc/`` are tested against these functions, and
:mod:`ear_stream.model.ops` falls back to them when the extension is not built.

All arithmetic happens in float32 whatever the input dtype, so bf16/fp16 inputs
only lose precision when they are read, never while accumulating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import GMS_C  # the stabiliser of the gradient-magnitude similarity, defined with the scoring knobs

#: Q3 multiplier: mean + 0.674·std is the upper quartile of a normal distribution.
Q3_SIGMA = 0.674
#: Added under the square root of the gradient magnitude so that the loss has a
#: finite gradient on flat regions; it changes magnitudes by at most 1e-6.
GRAD_EPS = 1e-12
#: Keeps LAMP finite when the combined loss reaches 1.
LAMP_CLAMP = 1.0 - 1e-6


# --------------------------------------------------------------------------- validation
def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise ``ValueError`` unless ``images`` is a floating [B, C, H, W] tensor."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W], got rank {images.dim()}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {images.dtype}")
    if images.shape[1] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"{name} must have C, H, W >= 1, got {tuple(images.shape)}")


def check_excise_args(images: torch.Tensor, attention: torch.Tensor | None, m: int) -> None:
    """Argument checks shared by the reference and the fused ``excise``."""
    check_images(images)
    if int(m) < 1:
        raise ValueError(f"mosaic scale m must be >= 1, got {m}")
    if attention is not None:
        if attention.dim() != 3:
            raise ValueError(f"attention must have shape [B, h, w], got rank {attention.dim()}")
        if attention.shape[0] != images.shape[0]:
            raise ValueError(f"attention batch {attention.shape[0]} does not match images batch {images.shape[0]}")
        if attention.shape[1] < 1 or attention.shape[2] < 1:
            raise ValueError(f"attention must have h, w >= 1, got {tuple(attention.shape)}")


def check_msgms_args(images: torch.Tensor, recon: torch.Tensor, scales: int, box: int) -> None:
    """Argument checks shared by the reference and the fused ``msgms``."""
    check_images(images)
    check_images(recon, "recon")
    if images.shape != recon.shape:
        raise ValueError(f"images {tuple(images.shape)} and recon {tuple(recon.shape)} must have the same shape")
    if int(scales) < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    smallest = 2 ** (int(scales) - 1)
    if images.shape[0] > 0 and (images.shape[2] < smallest or images.shape[3] < smallest):
        raise ValueError(
            f"image {images.shape[2]}x{images.shape[3]} is too small for {scales} scales "
            f"(needs at least {smallest}x{smallest})"
        )
    if box > 1 and box % 2 == 0:
        raise ValueError(f"box filter size must be odd (or <= 1 to disable), got {box}")


# --------------------------------------------------------------------------- excision
def q3_threshold(attention: torch.Tensor) -> torch.Tensor:
    """Per-image threshold mean(A) + 0.674·std(A) with the population std: [B, h, w] → [B].

    Mean and variance are accumulated in float64 and combined in float32, as the
    CPU and CUDA kernels do. That makes the constant-attention case exact on
    every backend: std = 0, the float64 mean equals every value, the threshold
    equals A everywhere, and ``S = A > threshold`` is all zeros (nothing is
    excised). A float32 mean can land one ulp below the value and excise all.
    """
    flat = attention.flatten(1).double()
    if flat.shape[0] == 0:
        return attention.new_zeros((0,), dtype=torch.float32)
    return flat.mean(dim=1).float() + Q3_SIGMA * flat.std(dim=1, unbiased=False).float()


def saliency_mask(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary mask S = A > Q3, nearest-upsampled to ``size``: [B, h, w] → [B, 1, H, W] float."""
    small = (attention.float() > q3_threshold(attention)[:, None, None]).float()  # strict: constant A → S = 0
    return F.interpolate(small[:, None], size=size, mode="nearest")


def tile_means(images: torch.Tensor, m: int) -> torch.Tensor:
    """Mosaic M(I): every m×m tile (aligned at (0, 0)) replaced by its mean.

    A partial edge tile averages only its in-bounds pixels: ``avg_pool2d`` with
    ``ceil_mode=True`` and no padding divides by the clipped window size.
    """
    h, w = images.shape[-2:]
    pooled = F.avg_pool2d(images.float(), kernel_size=m, stride=m, ceil_mode=True)
    up = pooled.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)
    return up[..., :h, :w]


def excise_reference(
    images: torch.Tensor, attention: torch.Tensor | None, m: int, hint: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """I' = M(I)·S + I·(1−S) and the fraction of masked pixels per image.

    ``attention=None`` masks every pixel (saliency ``none``); ``hint=False``
    fills the masked region with zeros instead of the mosaic (saliency ``binary``).
    """
    check_excise_args(images, attention, m)
    b, _, h, w = images.shape
    x = images.float()
    if attention is None:
        mask = x.new_ones((b, 1, h, w))
    else:
        mask = saliency_mask(attention, (h, w))
    fill = tile_means(x, int(m)) if hint else torch.zeros_like(x)
    composite = fill * mask + x * (1.0 - mask)
    ratio = mask.flatten(1).mean(dim=1) if b > 0 else x.new_zeros((0,))
    return composite.to(images.dtype), ratio


# --------------------------------------------------------------------------- MSGMS
def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Channel mean in float32: [B, C, H, W] → [B, 1, H, W]."""
    return images.float().mean(dim=1, keepdim=True)


def pool_pow2(gray: torch.Tensor, s: int) -> torch.Tensor:
    """Scale s of the pyramid: 2^s × 2^s average pooling in floor mode."""
    return gray if s == 0 else F.avg_pool2d(gray, kernel_size=2**s, stride=2**s)


def median3x3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median with replicate padding (the 5th of 9 sorted values).

    The nine neighbours as shifted slices and a top-5: standard operators every exporter expresses
    (ONNX has no median), and the same value as a sort.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    patches = torch.stack([padded[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], dim=2)
    return patches.topk(5, dim=2).values[:, :, 4]


def prewitt_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude with Prewitt kernels divided by 3, replicate padding."""
    kx = x.new_tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
    kernels = torch.stack([kx, kx.t()])[:, None]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(padded, kernels)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2 + GRAD_EPS)


def gms_distance(gray_a: torch.Tensor, gray_b: torch.Tensor, c: float = GMS_C, median: bool = False) -> torch.Tensor:
    """1 − GMS between two single-channel images of the same size."""
    if median:
        gray_a, gray_b = median3x3(gray_a), median3x3(gray_b)
    ga, gb = prewitt_magnitude(gray_a), prewitt_magnitude(gray_b)
    return 1.0 - (2.0 * ga * gb + c) / (ga**2 + gb**2 + c)


def gms_pyramid(images: torch.Tensor, recon: torch.Tensor, scales: int, c: float, median: bool) -> list[torch.Tensor]:
    """GMS distance at each scale s = 0..scales-1, each at its own (pooled) resolution."""
    gray_a, gray_b = to_gray(images), to_gray(recon)
    return [gms_distance(pool_pow2(gray_a, s), pool_pow2(gray_b, s), c=c, median=median) for s in range(scales)]


def box_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k×k mean with replicate padding; ``k <= 1`` returns ``x`` unchanged."""
    if k <= 1:
        return x
    r = k // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), kernel_size=k, stride=1)


def msgms_map_reference(
    images: torch.Tensor,
    recon: torch.Tensor,
    scales: int = 3,
    c: float = GMS_C,
    median: bool = True,
    box: int = 21,
) -> torch.Tensor:
    """Full-resolution MSGMS distance map [B, 1, H, W] (float32), docs/design.md, "MSGMS score"."""
    check_msgms_args(images, recon, scales, box)
    h, w = images.shape[-2:]
    total = images.new_zeros((images.shape[0], 1, h, w), dtype=torch.float32)
    if images.shape[0] == 0:
        return total
    for d in gms_pyramid(images, recon, scales, c, median):
        if d.shape[-2:] != (h, w):
            d = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
        total = total + d
    return box_filter(total / scales, box)


def msgms_reference(
    images: torch.Tensor,
    recon: torch.Tensor,
    scales: int = 3,
    c: float = GMS_C,
    median: bool = True,
    box: int = 21,
    want_map: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Anomaly score = max of the MSGMS map, per image; the map too when asked."""
    dmap = msgms_map_reference(images, recon, scales, c, median, box)
    score = dmap.flatten(1).amax(dim=1) if dmap.shape[0] > 0 else dmap.new_zeros((0,))
    return score, (dmap if want_map else None)


# --------------------------------------------------------------------------- training losses
def msgms_loss(images: torch.Tensor, recon: torch.Tensor, scales: int = 3, c: float = GMS_C) -> torch.Tensor:
    """Mean over scales of the mean GMS distance: a training loss in [0, 1]."""
    per_scale = [d.mean() for d in gms_pyramid(images, recon, scales, c, median=False)]
    return torch.stack(per_scale).mean()


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(images: torch.Tensor, recon: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) over channels and pixels, Gaussian window, reflect padding."""
    x, y = images.float(), recon.float()
    ch = x.shape[1]
    kernel = _gaussian_window(window, sigma, x.device).expand(ch, 1, window, window)
    pad = window // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode=mode), kernel, groups=ch)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()


def lamp(loss: torch.Tensor) -> torch.Tensor:
    """LAMP loss amplification −log(1 − L), clamped away from L = 1."""
    return -torch.log1p(-loss.clamp(max=LAMP_CLAMP))


def combined_loss(
    images: torch.Tensor,
    recon: torch.Tensor,
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    scales: int = 3,
) -> torch.Tensor:
    """LAMP(λ₂·L2 + λ_ssim·(1−SSIM) + λ_msgms·MSGMS), every term in [0, 1]."""
    w2, wssim, wgms = weights
    l2 = F.mse_loss(recon.float(), images.float())
    loss = w2 * l2 + wssim * (1.0 - ssim(images, recon)).clamp(0.0, 1.0) + wgms * msgms_loss(images, recon, scales)
    return lamp(loss)
