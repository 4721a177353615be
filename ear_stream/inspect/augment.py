"""Training batches: random crops at native resolution and opt-in augmentations suited to inspection.

Every random draw takes an explicit generator (one per step, seeded from the run's
seed and the step number), so a resumed run draws exactly what an uninterrupted one
would have. Flips and rot90 keep a texture a texture; the brightness/contrast jitter
is small on purpose: a real lighting fault must still look like one.
"""

from __future__ import annotations

import torch

from ..model.config import TrainConfig
from .tiling import pad_to_tile


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one optimisation step: a pure function of (seed, step), hence resumable."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The image order of one epoch, independent of any earlier draw."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch + 1))


def batches_of(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """One epoch's batches; a last batch of one image is dropped (BatchNorm needs two)."""
    return [b for b in order.split(batch_size) if b.numel() >= 2]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def random_crops(images: list[torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """One size×size crop of each [3, H, W] image (padded by edge replication when smaller)."""
    out = []
    for img in images:
        img = pad_to_tile(img, size)
        h, w = img.shape[-2:]
        y = int(torch.randint(h - size + 1, (1,), generator=gen))
        x = int(torch.randint(w - size + 1, (1,), generator=gen))
        out.append(img[:, y : y + size, x : x + size])
    return torch.stack(out)


def center_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Deterministic crops (held-out loss, the mosaic-scale estimate, saliency statistics)."""
    out = []
    for img in images:
        img = pad_to_tile(img, size)
        h, w = img.shape[-2:]
        y, x = (h - size) // 2, (w - size) // 2
        out.append(img[:, y : y + size, x : x + size])
    return torch.stack(out)


def augmentations(cfg: TrainConfig) -> list[str]:
    """The augmentations a config turns on, as recorded in the manifest."""
    names = [n for n in ("hflip", "vflip", "rot90") if getattr(cfg, n)]
    if cfg.jitter > 0:
        names.append(f"jitter:{cfg.jitter:g}")
    return names


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-image flips, quarter turns (square crops only) and brightness/contrast jitter of a [B, 3, S, S] batch."""
    if not augmentations(cfg):
        return x
    b = x.shape[0]
    draws = torch.rand((b, 5), generator=gen)
    out = []
    for i in range(b):
        img = x[i]
        if cfg.hflip and draws[i, 0] < 0.5:
            img = img.flip(-1)
        if cfg.vflip and draws[i, 1] < 0.5:
            img = img.flip(-2)
        if cfg.rot90 and img.shape[-1] == img.shape[-2]:
            img = torch.rot90(img, int(draws[i, 2] * 4) % 4, dims=(-2, -1))
        if cfg.jitter > 0:
            gain = 1.0 + cfg.jitter * (2.0 * float(draws[i, 3]) - 1.0)
            shift = cfg.jitter * (2.0 * float(draws[i, 4]) - 1.0) / 2.0
            mean = img.mean()
            img = ((img - mean) * gain + mean + shift).clamp(0.0, 1.0)
        out.append(img)
    return torch.stack(out)
