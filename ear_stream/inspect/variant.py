"""What a model's variant does, decided once from its config: one small strategy for inference and training.

A model is EAR with a saliency (``dino``, ``binary``, a weight-free one, or ``none``: mosaic everything),
optionally keeping the input outside the excised region (``keep_context``) — or the RIAD baseline.
:class:`Variant` answers each question those choices raise (which attention module, how to excise, which
pixels the U-Net may change) so that :mod:`.pipeline` and :mod:`.training` never branch on the names
themselves. (How a recovery is scored, by the MSGMS max or a learned head, is the pipeline's concern.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..model import ops
from ..model.artifact import ArtifactError
from ..model.config import ModelConfig, ScoringConfig
from ..model.reference import saliency_mask
from ..model.saliency import DinoAttention, build_dino, resolve_dino_weights
from ..model.weightfree import SelfSaliency, create_saliency, grid_pool

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """The variant of a :class:`ModelConfig` (frozen: a config read once, never re-read mid-run)."""

    method: str
    saliency: str
    mosaic_scale: int
    keep_context: bool

    @classmethod
    def of(cls, config: ModelConfig) -> Variant:
        return cls(config.method, config.saliency, config.mosaic_scale, config.keep_context)

    @property
    def is_riad(self) -> bool:
        """The baseline: masked inpainting passes, no excision, no attention."""
        return self.method == "riad"

    @property
    def needs_dino(self) -> bool:
        return self.saliency in ("dino", "binary")

    @property
    def uses_attention(self) -> bool:
        return not self.is_riad and self.saliency != "none"

    def build_saliency(
        self,
        params: dict,
        dino_weights: str | os.PathLike | None,
        device: torch.device,
        state: dict[str, torch.Tensor] | None = None,
    ) -> nn.Module | None:
        """The module that yields attention grids (``None`` without attention).

        DINO variants need a local weights file (clear error otherwise); weight-free
        variants come from the registry, with their fitted ``state`` when they have one.
        """
        if not self.uses_attention:
            return None
        if self.needs_dino:
            path = resolve_dino_weights(dino_weights)
            if path is None:
                raise ArtifactError(
                    f"saliency '{self.saliency}' needs DINO ViT-S/8 weights: pass --dino-weights PATH or set "
                    "EAR_DINO_WEIGHTS (or train with a weight-free variant: --saliency spectral|stats|self)"
                )
            return DinoAttention(build_dino(path)).to(device)
        module = create_saliency(self.saliency, params)
        if state:
            module.load_state_dict(state)
        return module.to(device)

    def excise(self, images: torch.Tensor, attention: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The corruption I' (docs/design.md, "Excision"): ``none`` mosaics all, ``binary`` empties the mask."""
        if self.saliency == "none":
            return ops.excise(images, None, self.mosaic_scale, True)
        if attention is None:
            raise ValueError(f"saliency '{self.saliency}' needs attention maps")
        return ops.excise(images, attention, self.mosaic_scale, self.saliency != "binary")

    def excised_mask(self, attention: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        """S at image size, on the attention's device: the Q3 mask, all ones for ``none``, zeros for RIAD."""
        b, _, h, w = images.shape
        if self.is_riad:
            return torch.zeros((b, 1, h, w))
        if attention is None:
            return torch.ones((b, 1, h, w))
        return saliency_mask(attention, (h, w))

    def context_mask(self, images: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor | None:
        """S at image size [B, 1, H, W] when ``keep_context`` applies (a masked EAR variant), else None."""
        if not self.keep_context or attention is None or self.is_riad:
            return None
        return self.excised_mask(attention, images).to(images.device)


def paste_context(recon: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``keep_context``: the U-Net's output inside the excised region S, the input everywhere else."""
    if mask is None:
        return recon
    mask = mask.to(recon.dtype)
    return recon * mask + images.to(recon.dtype) * (1.0 - mask)


def two_pass_attention(
    saliency: SelfSaliency, forward: Forward, images: torch.Tensor, sc: ScoringConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-saliency's first pass: light whole-image mosaic → U-Net → grid-pooled MSGMS error.

    Returns (attention [B, g, g], first-pass input, first-pass reconstruction).
    """
    light, _ = ops.excise(images, None, saliency.light_scale, True)
    recon = forward(light)
    _, dmap = ops.msgms(images, recon.float(), sc.n_scales, sc.c, sc.median, 1, True)
    assert dmap is not None  # want_map=True
    return grid_pool(dmap, saliency.grid), light, recon
