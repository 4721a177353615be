"""RIAD-style baseline (Zavrtanik et al. 2021) sharing EAR's U-Net, losses and scorer.

Reconstruction by inpainting with random disjoint square masks: the image is cut
into k×k-pixel cells, the cells are split at random into ``n`` disjoint sets,
and the U-Net inpaints each set from the image with that set removed; the
reconstruction keeps, for every pixel, the pass in which it was hidden.
Training draws one k per step from {2, 4, 8, 16}; inference runs all of them
(4 sizes × 3 masks = 12 U-Net passes) and averages the MSGMS maps over k.
Inference masks come from a fixed seed so that scores are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import ops
from .config import ScoringConfig

CELL_SIZES = (2, 4, 8, 16)
MASKS_PER_SIZE = 3
INFERENCE_SEED = 1234


def disjoint_masks(
    h: int, w: int, cell: int, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``n`` binary masks [n, 1, h, w] that partition the image into randomly assigned k×k cells."""
    gh, gw = -(-h // cell), -(-w // cell)
    cells = gh * gw
    owner = (torch.randperm(cells, generator=generator) % n).view(gh, gw)
    owner = owner.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w]
    return torch.stack([(owner == i).float() for i in range(n)])[:, None].to(device)


def inpaint(unet: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Σ_i U-Net(I ⊙ (1 − M_i)) ⊙ M_i: every pixel comes from the pass that did not see it."""
    recon = torch.zeros_like(images)
    for mask in masks:
        recon = recon + unet(images * (1.0 - mask)) * mask
    return recon


def training_reconstruction(
    unet: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    cell = CELL_SIZES[int(torch.randint(len(CELL_SIZES), (1,), generator=generator))]
    masks = disjoint_masks(images.shape[-2], images.shape[-1], cell, MASKS_PER_SIZE, generator, images.device)
    return inpaint(unet, images, masks)


@torch.no_grad()
def score(
    unet: nn.Module, images: torch.Tensor, scoring: ScoringConfig, want_map: bool = False, forward=None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """RIAD anomaly score: max of the MSGMS map averaged over the cell sizes. Returns (score, map, last recon)."""
    gen = torch.Generator().manual_seed(INFERENCE_SEED)
    forward = forward or unet
    h, w = images.shape[-2:]
    total: torch.Tensor | None = None
    recon = images
    for cell in CELL_SIZES:
        recon = inpaint(forward, images, disjoint_masks(h, w, cell, MASKS_PER_SIZE, gen, images.device))
        _, dmap = ops.msgms(images, recon, scoring.n_scales, scoring.c, scoring.median, scoring.box_px, want_map=True)
        assert dmap is not None  # want_map=True
        total = dmap if total is None else total + dmap
    assert total is not None
    dmap = total / len(CELL_SIZES)
    scores = dmap.flatten(1).amax(dim=1) if dmap.shape[0] else dmap.new_zeros((0,))
    return scores, (dmap if want_map else None), recon
