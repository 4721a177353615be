"""The whole scoring function of a trained model as one module: what ``ear-stream export`` traces.

``images [B, 3, S, S]`` (float32, RGB, values in [0, 1], resized as the model expects) → saliency →
excise/mosaic → U-Net → MSGMS (→ learned head) → ``score [B]``, ``map [B, 1, S, S]`` (the map the
score is the max of, border band zeroed), ``recon [B, 3, S, S]`` and ``mask_ratio [B]``. The pipeline's
verdicts, regions and out-of-distribution check are computed from these outside the graph, so an
exported model gives the same Parquet rows as the torch path (:mod:`.runtime`).

The fused ops go in either as the plain-PyTorch reference formulation (``fused=False``: standard
operators, what ONNX and OpenVINO can express) or as the extension's ``torch.ops.ear`` kernels
(``fused=True``: what an AOTInductor package calls). It is the same math as
:meth:`ear_stream.inspect.pipeline.Pipeline.score_tensor`, composed from the same functions; the
parity tests hold it to that.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..inspect.maps import banded_max
from ..inspect.pipeline import Pipeline
from ..inspect.variant import Variant, paste_context
from ..model import ops
from ..model import reference as ref
from ..model.config import ModelConfig
from ..model.head import smoothed_map
from ..model.weightfree import SpectralResidual

#: the graph's one input and its outputs, by name (the ONNX graph's names, the export JSON's list)
INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "map", "recon", "mask_ratio")


class ExportError(ConfigError):
    """A model, format or option that cannot be exported (said before anything is written)."""


@dataclass(frozen=True)
class GraphOptions:
    """How the graph is built for one format.

    ``fused``: the extension's kernels (AOTI) instead of the reference formulation; ``fft_dtype``: the
    spectral saliency's FFT precision (float64 as in the torch path; OpenVINO has only float32 FFTs);
    ``network_dtype``: the U-Net's and head's weights and activations (bfloat16 for a bf16 package).
    """

    fused: bool = False
    fft_dtype: torch.dtype = torch.float64
    network_dtype: torch.dtype = torch.float32


def check_exportable(config: ModelConfig) -> None:
    """Refuse, in one line, a model whose scoring is not one fixed-size graph."""
    variant = Variant.of(config)
    if config.native:
        raise ExportError(
            "native-resolution models score over tiles of any image size, which is not one fixed-size graph: "
            "export a whole-image model (train without --scale)"
        )
    if variant.is_riad:
        raise ExportError("the RIAD baseline (12 masked passes) is not exported: export an EAR model")
    if variant.two_pass:
        raise ExportError(
            f"saliency {config.saliency!r} runs a first U-Net pass whose error picks the mask: not exported yet "
            "(export a model with saliency spectral, stats, dino, binary or none)"
        )


class ScoringGraph(nn.Module):
    """One model's scoring function ``images → (score, map, recon, mask_ratio)`` (see the module doc)."""

    def __init__(self, pipe: Pipeline, options: GraphOptions = GraphOptions()) -> None:
        super().__init__()
        check_exportable(pipe.config)
        self.config = pipe.config
        self.options = options
        self.variant = Variant.of(pipe.config)
        # copies: the graph's networks take the export's dtype and layout, the pipeline's stay as they are
        dtype = options.network_dtype
        self.unet = copy.deepcopy(pipe.unet).to(dtype=dtype, memory_format=torch.contiguous_format).eval()
        head = pipe.head
        self.head = (
            None if head is None else copy.deepcopy(head).to(dtype=dtype, memory_format=torch.contiguous_format).eval()
        )
        self.saliency = pipe.attention_model if self.variant.single_pass else None
        normal = pipe.normal_map if pipe.config.scoring.normal_map else None
        self.register_buffer("normal_map", None if normal is None else normal.detach().float().cpu().clone())

    def _attention(self, images: torch.Tensor) -> torch.Tensor | None:
        if self.saliency is None:
            return None
        if isinstance(self.saliency, SpectralResidual):
            return self.saliency.residual(images, self.options.fft_dtype)
        return self.saliency(images).float()

    def _excise(self, images: torch.Tensor, attention: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        m, hint = self.config.mosaic_scale, self.variant.spec.mosaic_hint
        if self.options.fused:
            return ops.excise(images, attention, m, hint)
        return ref.excise_reference(images, attention, m, hint)

    def _msgms_map(self, images: torch.Tensor, recon: torch.Tensor, box: int) -> torch.Tensor:
        sc = self.config.scoring
        if self.options.fused:
            dmap = ops.msgms(images, recon, sc.n_scales, sc.c, sc.median, box, True)[1]
            assert dmap is not None  # want_map=True
            return dmap
        return ref.msgms_map_reference(images, recon, sc.n_scales, sc.c, sc.median, box)

    def _network(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x.to(self.options.network_dtype)).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        images = images.float()
        sc = self.config.scoring
        attention = self._attention(images)
        composite, ratio = self._excise(images, attention)
        recon = self._network(self.unet, composite)
        if self.variant.keep_context and attention is not None:
            recon = paste_context(recon, images, ref.saliency_mask(attention, tuple(images.shape[-2:])))
        if self.head is None:
            dmap = self._msgms_map(images, recon, sc.box_px)
            if self.normal_map is not None:
                dmap = dmap - self.normal_map
        else:
            h, w = images.shape[-2:]
            inputs = torch.cat([images, recon, self._msgms_map(images, recon, 1)], dim=1)
            pad_h, pad_w = (-h) % 4, (-w) % 4  # the head halves twice (as Pipeline.score_recon pads)
            if pad_h or pad_w:
                inputs = F.pad(inputs, (0, pad_w, 0, pad_h), mode="replicate")
            logits = self._network(self.head, inputs)[..., :h, :w]
            dmap = smoothed_map(logits, sc.box_px, sc.head_map)
        score, band = banded_max(dmap, sc.border_px, True)
        assert band is not None  # want_map=True
        return score, band, recon, ratio
