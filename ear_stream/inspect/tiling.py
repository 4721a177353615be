"""Tiled inference: cover an image of any size with overlapping square tiles and stitch them back.

Why stitch *reconstructions* rather than maps: the MSGMS map of a pixel depends on
its neighbours (the pyramid, the gradients, the box filter), so maps stitched
from tiles would differ from a one-pass map along every seam. Here each tile goes
through saliency → excise → U-Net, its reconstruction is written into a canvas of
the whole image (each pixel from the one tile whose centre it is nearest, so no
pixel is averaged), and the MSGMS map, the box filter, the border band and the max
then run once on the whole image — a defect on a seam scores as in one pass, up to
the U-Net's own context at the tile edge, which the overlap keeps away from the
owned region.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``length`` pixels; the last tile ends exactly at the edge.

    A length up to one tile gets one tile at 0 (the image is padded to the tile).
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def owned_spans(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The pixels each tile writes: boundaries sit at the middle of each overlap."""
    bounds = [0]
    for a, b in itertools.pairwise(starts):
        bounds.append((b + a + tile) // 2)
    bounds.append(length)
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


@dataclass(frozen=True)
class Tile:
    """One tile of one image: where it is cut from (``y``, ``x``) and the region it owns."""

    image: int
    y: int
    x: int
    own_y: tuple[int, int]
    own_x: tuple[int, int]


def plan_tiles(index: int, height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Every tile of one image, row by row."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    oy, ox = owned_spans(ys, tile, height), owned_spans(xs, tile, width)
    return [Tile(index, y, x, sy, sx) for y, sy in zip(ys, oy, strict=True) for x, sx in zip(xs, ox, strict=True)]


def pad_to_tile(image: torch.Tensor, tile: int) -> torch.Tensor:
    """[C, H, W] → at least tile×tile, replicating the last row/column (a small image is one padded tile)."""
    h, w = image.shape[-2:]
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph == 0 and pw == 0:
        return image
    return F.pad(image[None], (0, pw, 0, ph), mode="replicate")[0]


def cut(padded: torch.Tensor, t: Tile, tile: int) -> torch.Tensor:
    return padded[:, t.y : t.y + tile, t.x : t.x + tile]


def paste(canvas: torch.Tensor, piece: torch.Tensor, t: Tile) -> None:
    """Write the region ``t`` owns from its tile output ``piece`` [C, T, T] into ``canvas`` [C, H, W]."""
    (y0, y1), (x0, x1) = t.own_y, t.own_x
    canvas[:, y0:y1, x0:x1] = piece[:, y0 - t.y : y1 - t.y, x0 - t.x : x1 - t.x]
