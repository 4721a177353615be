"""What a model's variant does, decided once from its config: one small strategy for inference and training.

A model is EAR with a saliency (``dino``, ``binary``, a weight-free one, or ``none``: mosaic everything),
optionally keeping the input outside the excised region (``keep_context``) — or the RIAD baseline.
:class:`Variant` answers each question those choices raise (whether there is attention and whether it is a
first U-Net pass, how to excise, which pixels the U-Net may change) from the saliency's traits in
:mod:`ear_stream.model.registry`, so that :mod:`.pipeline` and :mod:`.training` never branch on the names
themselves. (Which module a variant gets is :mod:`ear_stream.model.factory`'s; how a recovery is scored, by
the MSGMS max or a learned head, is the pipeline's concern.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from ..model import ops
from ..model.config import ModelConfig, ScoringConfig
from ..model.reference import saliency_mask
from ..model.registry import SaliencySpec, saliency_spec
from ..model.saliency import SaliencyModule
from ..model.weightfree import SelfSaliency, grid_pool

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """The variant of a :class:`ModelConfig` (frozen: a config read once, never re-read mid-run).

    What the saliency needs and does is its spec's traits (:mod:`ear_stream.model.registry`).
    """

    method: str
    saliency: str
    mosaic_scale: int
    keep_context: bool

    @classmethod
    def of(cls, config: ModelConfig) -> Variant:
        return cls(config.method, config.saliency, config.mosaic_scale, config.keep_context)

    @property
    def spec(self) -> SaliencySpec:
        return saliency_spec(self.saliency)

    @property
    def is_riad(self) -> bool:
        """The baseline: masked inpainting passes, no excision, no attention."""
        return self.method == "riad"

    @property
    def needs_dino(self) -> bool:
        return self.spec.needs_dino

    @property
    def uses_attention(self) -> bool:
        return not self.is_riad and self.spec.attention

    @property
    def two_pass(self) -> bool:
        """The attention is a first U-Net pass (:func:`two_pass_attention`), not the saliency module's forward."""
        return self.uses_attention and self.spec.two_pass

    @property
    def single_pass(self) -> bool:
        """The saliency module's forward alone yields the attention (so it can be computed once per image)."""
        return self.uses_attention and not self.spec.two_pass

    def excise(self, images: torch.Tensor, attention: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The corruption I' (docs/design.md, "Excision"): without attention the whole image is mosaicked;
        a variant without the mosaic hint (``binary``) empties the mask."""
        if not self.spec.attention:
            return ops.excise(images, None, self.mosaic_scale, self.spec.mosaic_hint)
        if attention is None:
            raise ValueError(f"saliency '{self.saliency}' needs attention maps")
        return ops.excise(images, attention, self.mosaic_scale, self.spec.mosaic_hint)

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
    saliency: SaliencyModule, forward: Forward, images: torch.Tensor, sc: ScoringConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-saliency's first pass: light whole-image mosaic → U-Net → grid-pooled MSGMS error.

    ``saliency``: the module of a ``two_pass`` variant (it holds the pass's light scale and grid).
    Returns (attention [B, g, g], first-pass input, first-pass reconstruction).
    """
    params = cast(SelfSaliency, saliency)  # what the two-pass spec's registered class is
    light, _ = ops.excise(images, None, params.light_scale, True)
    recon = forward(light)
    _, dmap = ops.msgms(images, recon.float(), sc.n_scales, sc.c, sc.median, 1, True)
    assert dmap is not None  # want_map=True
    return grid_pool(dmap, params.grid), light, recon
