"""Weight-free saliency: attention grids for EAR's Q3 mask without pretrained weights.

Air-gapped plants (and every machine of this project) have no DINO checkpoint.
Each variant here produces the same thing DINO does — an attention grid
``[B, g, g]`` whose upper quartile (Q3 rule, :func:`reference.q3_threshold`)
marks the regions to excise — so the fused ``excise`` and everything after it
stay unchanged. Each class registers itself against its spec in :mod:`.registry`
(the traits: fitted, two-pass); ``ModelConfig.saliency`` selects one and
``ModelConfig.saliency_params`` holds its parameters, so the manifest records
exactly what ran.

* ``spectral`` — spectral residual (Hou & Zhang, CVPR 2007) of the gray image:
  what the image's log-amplitude spectrum has beyond its smooth trend. The
  image is reflect-padded before the FFT so that the periodic wrap-around and
  the image borders do not light up, and the pad is cropped away afterwards.
* ``stats`` — deviation from the normal statistics: per grid cell, the mean and
  std of cheap features (local gray mean, gradient energy) over the training
  images; attention is the mean squared z-score. Suited to aligned products.
* ``self`` — self-saliency (two-pass EAR): a first U-Net pass on a lightly
  mosaicked whole image gives an MSGMS error map; its grid-pooled values are
  the attention for the second pass. The pass itself lives in the pipeline
  (it needs the U-Net); this class only holds its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .reference import prewitt_magnitude, to_gray
from .registry import DEFAULT_GRID, SaliencySpec, register_spec, saliency_names, saliency_spec
from .saliency import SaliencyModule

_CLASSES: dict[str, type[WeightFreeSaliency]] = {}


def register_saliency(variant: str | SaliencySpec) -> Callable[[type[WeightFreeSaliency]], type[WeightFreeSaliency]]:
    """Class decorator: make a weight-free variant selectable as ``--saliency NAME``.

    ``variant``: the name of a spec declared in :mod:`.registry` (the built-ins: the CLI lists them before
    torch loads), or a new :class:`~.registry.SaliencySpec` to declare with the class.
    """
    spec = register_spec(variant) if isinstance(variant, SaliencySpec) else saliency_spec(variant)
    if not spec.weight_free:
        raise ConfigError(f"saliency {spec.name!r} needs DINO or no attention: it is not a weight-free module")

    def wrap(cls: type[WeightFreeSaliency]) -> type[WeightFreeSaliency]:
        cls.name = spec.name
        _CLASSES[spec.name] = cls
        return cls

    return wrap


def weight_free_variants() -> tuple[str, ...]:
    return tuple(_CLASSES)


def create_saliency(name: str, params: dict[str, Any] | None = None) -> WeightFreeSaliency:
    """Instantiate a registered variant with its manifest parameters (unknown keys are an error)."""
    if name not in _CLASSES:
        raise ConfigError(f"unknown weight-free saliency {name!r}; known: {sorted(saliency_names(weight_free=True))}")
    return _CLASSES[name](**(params or {}))


class WeightFreeSaliency(SaliencyModule):
    """Base class of the weight-free variants: a grid side, and the traits of the variant's spec.

    ``fitted`` variants learn statistics from the training images (:meth:`fit`)
    and keep them as buffers, which the artifact stores next to the U-Net.
    ``two_pass`` variants need the U-Net and are run by the pipeline.
    """

    name = ""

    def __init__(self, grid: int = DEFAULT_GRID) -> None:
        super().__init__()
        if grid < 2:
            raise ConfigError(f"saliency grid must be >= 2, got {grid}")
        self.grid = int(grid)

    @property
    def spec(self) -> SaliencySpec:
        return saliency_spec(self.name)

    @property
    def fitted(self) -> bool:
        return self.spec.fitted

    @property
    def two_pass(self) -> bool:
        return self.spec.two_pass

    def params(self) -> dict[str, Any]:
        return {"grid": self.grid}

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def grid_pool(values: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, 1, H, W] → [B, grid, grid] cell means (adaptive average pooling)."""
    return F.adaptive_avg_pool2d(values.float(), grid)[:, 0]


@register_saliency("spectral")
class SpectralResidual(WeightFreeSaliency):
    """Spectral residual saliency on a ``work``-pixel gray image, reflect-padded by ``pad`` of its side."""

    def __init__(self, grid: int = DEFAULT_GRID, work: int = 64, pad: float = 0.25, blur_sigma: float = 2.0) -> None:
        super().__init__(grid)
        self.work, self.pad, self.blur_sigma = int(work), float(pad), float(blur_sigma)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "work": self.work, "pad": self.pad, "blur_sigma": self.blur_sigma}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return images.new_zeros((0, self.grid, self.grid), dtype=torch.float32)
        return self.residual(images, torch.float64)

    def residual(self, images: torch.Tensor, fft_dtype: torch.dtype) -> torch.Tensor:
        """The saliency grid with the FFT in ``fft_dtype`` (float64 here; an exported graph for a runtime
        without float64 FFTs takes float32).

        Written in real arithmetic (the phase as ``spectrum / |spectrum|``) rather than with a complex
        ``exp``: the same values, and operators every exporter can express.
        """
        gray = to_gray(images)
        gray = F.interpolate(gray, size=(self.work, self.work), mode="bilinear", align_corners=False, antialias=True)
        p = max(1, int(round(self.pad * self.work)))
        x = F.pad(gray, (p, p, p, p), mode="reflect").to(fft_dtype)
        spectrum = torch.view_as_real(torch.fft.fft2(x))
        re, im = spectrum[..., 0], spectrum[..., 1]
        amp = torch.sqrt(re * re + im * im)
        log_amp = torch.log(amp + 1e-9)
        # the 3×3 circular mean of the log amplitude, as nine shifted copies (avg_pool has no float64 kernel
        # in every runtime)
        smooth = sum(torch.roll(log_amp, (dy, dx), (-2, -1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
        gain = torch.exp(log_amp - smooth)
        nonzero = amp > 0  # the phase of a zero coefficient is 0: unit (1, 0)
        safe = torch.where(nonzero, amp, torch.ones_like(amp))
        unit_re = torch.where(nonzero, re / safe, torch.ones_like(re))
        unit_im = torch.where(nonzero, im / safe, torch.zeros_like(im))
        residual = torch.view_as_complex(torch.stack([gain * unit_re, gain * unit_im], dim=-1))
        back = torch.view_as_real(torch.fft.ifft2(residual))
        sal = back[..., 0] ** 2 + back[..., 1] ** 2
        sal = gaussian_blur(sal.float(), self.blur_sigma)[..., p:-p, p:-p]
        return grid_pool(sal, self.grid)


@register_saliency("stats")
class NormalDeviation(WeightFreeSaliency):
    """Mean squared z-score of per-cell gray mean and gradient energy against the training images."""

    mean: torch.Tensor  # buffers, typed
    std: torch.Tensor

    def __init__(self, grid: int = DEFAULT_GRID) -> None:
        super().__init__(grid)
        self.register_buffer("mean", torch.zeros(2, grid, grid))
        self.register_buffer("std", torch.ones(2, grid, grid))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        gray = to_gray(images)
        energy = prewitt_magnitude(gray) ** 2
        return torch.stack([grid_pool(gray, self.grid), grid_pool(energy, self.grid)], dim=1)  # [B, 2, g, g]

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        feats = torch.cat([self.features(images[i : i + 64]) for i in range(0, images.shape[0], 64)])
        self.mean.copy_(feats.mean(dim=0))
        # a floor on std keeps one nearly-constant cell from dominating every image
        floor = feats.std(dim=0).flatten(1).median(dim=1).values.clamp(min=1e-6)[:, None, None] * 0.1
        self.std.copy_(feats.std(dim=0).maximum(floor))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = (self.features(images) - self.mean) / self.std
        return (z * z).mean(dim=1)


@register_saliency("self")
class SelfSaliency(WeightFreeSaliency):
    """Two-pass EAR: the first pass (whole image mosaicked at ``light_scale``) finds what to excise."""

    def __init__(self, grid: int = DEFAULT_GRID, light_scale: int = 4) -> None:
        super().__init__(grid)
        if light_scale < 1:
            raise ConfigError(f"light_scale must be >= 1, got {light_scale}")
        self.light_scale = int(light_scale)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "light_scale": self.light_scale}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("self-saliency needs the U-Net: use Pipeline.attention / inspect.variant.two_pass_attention")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, 1, H, W] with reflect padding (radius 2σ)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(2 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))
