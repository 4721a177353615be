"""The training images as the model sees them, and what is computed from them once before the first step.

Owns :class:`TrainingSet` (whole-image tensors with their cached attention, or native-resolution
images cropped afresh per step), the attention cache of docs/design.md ("Training"), and the
mosaic-scale estimate from the images' edge response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.config import max_mosaic_scale
from ..model.mosaic_scale import MosaicEstimator, r10
from ..model.reference import saliency_mask
from .augment import center_crops, random_crops
from .inputs import Images


def compute_attention(
    attention_model: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 32
) -> torch.Tensor:
    """Attention maps for a whole image set, computed once (the attention cache of docs/design.md, "Training")."""
    out = [attention_model(images[i : i + batch].to(device)).cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


def estimate_mosaic_scale(
    images: torch.Tensor, attention: torch.Tensor | None, estimator: MosaicEstimator, floor: int = 1
) -> tuple[int, float]:
    """m̂ from the mean r10 over the training images (saliency region only when a mask exists).

    Bounded below by ``floor`` and above by :func:`max_mosaic_scale` (at least 4×4 cells).
    """
    mask = None if attention is None else saliency_mask(attention, (int(images.shape[-2]), int(images.shape[-1])))
    value = float(r10(images, mask).mean())
    ceiling = max_mosaic_scale(int(images.shape[-1]))
    return min(ceiling, max(floor, estimator.estimate(value))), value


@dataclass
class TrainingSet:
    """The training images as the model sees them.

    Whole-image models: one resized [N, 3, S, S] tensor, attention cached per image
    when nothing changes an image between epochs. Native-resolution models
    (``config.scale``): a list of [3, H, W] images, a fresh random S×S crop of each
    per step, attention computed on the crop.
    """

    images: Images
    crop: int
    attention: torch.Tensor | None = None

    @property
    def native(self) -> bool:
        return isinstance(self.images, list)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.native:
            return random_crops([self.images[int(i)] for i in idx], self.crop, gen), None
        return self.images[idx], None if self.attention is None else self.attention[idx]

    def fixed(self, idx) -> torch.Tensor:
        """Deterministic views of some images (centre crops when native)."""
        if self.native:
            return center_crops([self.images[int(i)] for i in idx], self.crop)
        return self.images[torch.as_tensor(idx)]
