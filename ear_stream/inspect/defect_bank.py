"""Confirmed defects pasted onto good images: the simulated defects a line's own labels add (the defect bank).

``refine`` replaces a share of the procedural simulated defects (:mod:`.simulate`) by a confirmed defect:
its pixels inside its mask, flipped and shifted at random, their brightness moved to the mean of the ring
around where they land (a pasted patch's own background would otherwise teach the head its boundary, not the
defect), blended with a softened edge. The recovery must return the clean image and the head segment the
pasted region, as for a simulated one. Only defects with a region take part: a brushed mask, or the
parent head's map of it (:func:`map_region`) for a defect labelled without one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .simulate import SimulatedBatch

#: pixels of the ring around a pasted defect whose mean brightness the patch takes
RING_PX = 5
#: a defect labelled without a mask contributes the top share of the parent head's map as its region
MAP_REGION_SHARE = 0.02


def map_region(score_map: torch.Tensor, share: float = MAP_REGION_SHARE) -> torch.Tensor:
    """[N, 1, H, W] maps → {0, 1} regions: each map's top ``share`` of pixels (at least one)."""
    flat = score_map.flatten(1).float()
    k = max(1, int(share * flat.shape[1]))
    cut = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= cut).float().view_as(score_map)


class DefectBank:
    """Confirmed defects [N, 3, S, S] with their regions [N, 1, S, S] ({0, 1}, each marking something)."""

    def __init__(self, images: torch.Tensor, regions: torch.Tensor) -> None:
        keep = regions.flatten(1).sum(1) > 0
        self.images, self.regions = images[keep].float(), regions[keep].float()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def paste(self, clean: torch.Tensor, sim: SimulatedBatch, gen: torch.Generator, share: float) -> SimulatedBatch:
        """``sim`` with each simulated defect replaced, with probability ``share``, by a banked one on ``clean``."""
        if len(self) == 0 or share <= 0:
            return sim
        images, mask = sim.images.clone(), sim.mask.clone()
        had = sim.mask.flatten(1).sum(1) > 0
        draws = torch.rand(clean.shape[0], generator=gen)
        picks = torch.randint(len(self), (clean.shape[0],), generator=gen)
        flips = torch.rand((clean.shape[0], 2), generator=gen) < 0.5
        shifts = torch.randint(-clean.shape[-1] // 4, clean.shape[-1] // 4 + 1, (clean.shape[0], 2), generator=gen)
        for i in torch.where(had & (draws < share))[0].tolist():
            patch, region = self.images[picks[i]], self.regions[picks[i]]
            dims = [d for d, f in zip((-1, -2), flips[i].tolist(), strict=True) if f]
            if dims:
                patch, region = patch.flip(dims), region.flip(dims)
            shift = (int(shifts[i, 0]), int(shifts[i, 1]))
            patch, region = patch.roll(shift, dims=(-2, -1)), region.roll(shift, dims=(-2, -1))
            target = clean[i].to(patch.device)
            ring = (F.max_pool2d(region[None], 2 * RING_PX + 1, 1, RING_PX)[0] - region).clamp(0, 1)
            if ring.sum() > 0:  # match the surroundings' brightness: the defect's contrast is what is kept
                offset = (target * ring).sum((1, 2)) / ring.sum() - (patch * ring).sum((1, 2)) / ring.sum()
                patch = patch + offset[:, None, None]
            soft = F.avg_pool2d(region[None], 3, 1, 1, count_include_pad=False)[0]
            images[i] = (target * (1 - soft) + patch.clamp(0, 1) * soft).to(images.dtype)
            mask[i] = region.to(mask.dtype)
        return SimulatedBatch(images, mask)
