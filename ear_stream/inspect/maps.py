"""From a recovery to a score: the fused MSGMS map, the border band, the normal map.

Owns how a map becomes an image score (the max at least ``border`` pixels from the edges,
NaN-sticky like the reference's amax) and the normal map fitted on good training images.
The learned head's map goes through the same :func:`banded_max` (:meth:`.pipeline.Pipeline.score_recon`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..model import ops
from ..model.config import ScoringConfig

if TYPE_CHECKING:
    from .pipeline import Pipeline


def score_maps(
    images: torch.Tensor,
    recon: torch.Tensor,
    sc: ScoringConfig,
    want_map: bool,
    normal_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused MSGMS score (and map), the max taken at least ``sc.border`` pixels from the edges.

    With a border band or a ``normal_map`` ([1, 1, H, W], subtracted first) the map is
    materialised and the band zeroed (so a saved heatmap shows what was scored); the
    max keeps NaN like the reference's amax. Without either, the fused op never writes it.
    """
    h, w = images.shape[-2:]
    if min(sc.border_px, (h - 1) // 2, (w - 1) // 2) <= 0 and normal_map is None:
        return ops.msgms(images, recon, sc.n_scales, sc.c, sc.median, sc.box_px, want_map)
    _, dmap = ops.msgms(images, recon, sc.n_scales, sc.c, sc.median, sc.box_px, True)
    assert dmap is not None  # want_map=True
    if normal_map is not None:
        dmap = dmap - normal_map.to(dmap.device, dmap.dtype)
    return banded_max(dmap, sc.border_px, want_map)


def banded_max(dmap: torch.Tensor, border: int, want_map: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image max of a [B, 1, H, W] map at least ``border`` pixels from the edges (NaN-sticky, like amax);
    the map returned has the band zeroed, so a saved heatmap shows what was scored."""
    h, w = dmap.shape[-2:]
    b = min(border, (h - 1) // 2, (w - 1) // 2)
    inner = dmap[..., b : h - b, b : w - b] if b > 0 else dmap
    scores = inner.flatten(1).amax(dim=1) if dmap.shape[0] else dmap.new_zeros((0,))
    if not want_map:
        return scores, None
    return scores, (F.pad(inner, (b, b, b, b)) if b > 0 else dmap)


@torch.no_grad()
def fit_normal_map(pipe: Pipeline, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Mean MSGMS map [1, 1, H, W] of good *training* images (before any band): what is normally hard to recover."""
    sc = dataclasses.replace(pipe.config.scoring, border=0, normal_map=False)
    total, n = None, 0
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(pipe.device)
        _, dmap = score_maps(x, pipe.recover(x)[3], sc, True)
        assert dmap is not None  # want_map=True
        total = dmap.sum(0, keepdim=True) if total is None else total + dmap.sum(0, keepdim=True)
        n += x.shape[0]
    if total is None:
        raise DataError("a normal map needs at least one training image")
    return (total / max(1, n)).cpu()
