"""Native-resolution scoring: images of any size over overlapping tiles, stitched and scored whole.

Owns the loop that batches the tiles of every image through one model's recovery, stitches the
reconstructions and masks onto poisoned canvases (:mod:`.tiling` plans the tiles and owns the
seams), and scores each stitched image once. Memory grows with the tile batch and one image,
not with the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .ood import FEATURES, image_features
from .regions import region_table
from .tiling import cut, pad_to_tile, paste, plan_tiles
from .verdicts import BatchResult

if TYPE_CHECKING:
    from .pipeline import Pipeline


@torch.no_grad()
def score_tiled(
    pipe: Pipeline,
    images: list[torch.Tensor],
    want_maps: bool = False,
    want_recon: bool = False,
    want_regions: bool = False,
    orig_sizes: list[tuple[int, int]] | None = None,
) -> BatchResult:
    """Score [3, H, W] images of any sizes with a native-resolution pipeline (:meth:`.Pipeline.score_tiled`)."""
    cfg = pipe.config
    if not cfg.native:
        raise ValueError("score_tiled needs a native-resolution model (trained with --train-crop)")
    tile, overlap = int(cfg.tile), int(cfg.tile_overlap)  # type: ignore[arg-type]
    imgs = [img.to(pipe.device, non_blocking=True).float() for img in images]
    for img in imgs:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected [3, H, W] images, got {tuple(img.shape)}")
    padded = [pad_to_tile(img, tile) for img in imgs]
    plan = [t for i, img in enumerate(imgs) for t in plan_tiles(i, img.shape[1], img.shape[2], tile, overlap)]
    # poisoned canvases: a pixel no tile wrote stays NaN and fails the image closed
    recon = [torch.full_like(img, float("nan")) for img in imgs]
    mask = [img.new_full((1, *img.shape[1:]), float("nan")) for img in imgs]
    composite = [torch.full_like(img, float("nan")) for img in imgs] if want_recon else None
    for k in range(0, len(plan), pipe.tile_batch):
        chunk = plan[k : k + pipe.tile_batch]
        x = torch.stack([cut(padded[t.image], t, tile) for t in chunk])
        attention, comp, _, rec = pipe.recover(x)
        smask = pipe.variant.excised_mask(attention, x).to(pipe.device)
        for j, t in enumerate(chunk):
            paste(recon[t.image], rec[j], t)
            paste(mask[t.image], smask[j], t)
            if composite is not None:
                paste(composite[t.image], comp[j], t)
    scores, maps, regions, features = [], [], [], []
    for i, (img, rec) in enumerate(zip(imgs, recon, strict=True)):
        features.append(image_features(img[None], rec[None]))
        score, dmap = pipe.score_recon(img[None], rec[None], want_maps or want_regions)
        broken = ~torch.isfinite(rec).all()
        scores.append(torch.where(broken, torch.full_like(score, float("nan")), score))
        if want_regions:
            assert dmap is not None  # asked for
            size = orig_sizes[i] if orig_sizes else (int(img.shape[-2]), int(img.shape[-1]))
            regions += region_table(dmap[:, 0], dmap[:, 0] > pipe.region_threshold, [size])
        if want_maps:
            assert dmap is not None  # asked for
            maps.append(dmap[0].cpu())
    ratio = torch.stack([m.mean() for m in mask]) if mask else torch.zeros(0)
    score_t = torch.cat(scores) if scores else torch.zeros(0)
    return pipe._result(
        score_t,
        ratio,
        maps if want_maps else None,
        [r.cpu() for r in recon] if want_recon else None,
        [c.cpu() for c in composite] if composite is not None else None,
        [m.cpu() for m in mask] if want_recon else None,
        regions if want_regions else None,
        np.concatenate(features) if features else np.zeros((0, len(FEATURES))),
    )
