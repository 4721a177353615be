"""The inference pipeline shared by every entry point (CLI, stream worker, Ray actors).

Batch of images in [0, 1] → attention (DINO, when the variant uses it) →
fused ``excise`` → U-Net recovery → fused ``msgms`` score → verdicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.decode import to_model_input
from ..model import ops
from ..model.artifact import ArtifactError, load_artifact, sha256_file
from ..model.config import ModelConfig
from ..model.saliency import DinoAttention, build_dino, resolve_dino_weights
from ..model.unet import UNet


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return dev


def needs_dino(config: ModelConfig) -> bool:
    return config.saliency in ("dino", "binary")


def load_attention_model(
    config: ModelConfig, dino_weights: str | os.PathLike | None, device: torch.device
) -> DinoAttention | None:
    """The DINO attention module when the variant needs one; a clear error when no weights are given."""
    if not needs_dino(config):
        return None
    path = resolve_dino_weights(dino_weights)
    if path is None:
        raise ArtifactError(
            f"saliency '{config.saliency}' needs DINO ViT-S/8 weights: pass --dino-weights PATH or set EAR_DINO_WEIGHTS"
        )
    return DinoAttention(build_dino(path)).to(device)


def excise_for(
    config: ModelConfig, images: torch.Tensor, attention: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The variant's corruption I' of SPEC §1: ``none`` mosaics all, ``binary`` empties the mask."""
    if config.saliency == "none":
        return ops.excise(images, None, config.mosaic_scale, True)
    if attention is None:
        raise ValueError(f"saliency '{config.saliency}' needs attention maps")
    return ops.excise(images, attention, config.mosaic_scale, config.saliency == "dino")


@dataclass
class BatchResult:
    """Per-image outputs of one batch; arrays are float32 numpy, maps stay tensors."""

    scores: np.ndarray
    normalized: np.ndarray
    is_anomaly: np.ndarray
    mask_ratio: np.ndarray
    maps: torch.Tensor | None = None
    recon: torch.Tensor | None = None
    composite: torch.Tensor | None = None


class Pipeline:
    """One trained product model, ready to score batches on one device."""

    def __init__(
        self,
        config: ModelConfig,
        unet: UNet,
        threshold: float,
        device: torch.device,
        attention_model: DinoAttention | None = None,
        model_version: str = "",
    ) -> None:
        self.config = config
        self.threshold = float(threshold)
        self.device = device
        self.model_version = model_version
        self.unet = unet.to(device).eval()
        self.attention_model = attention_model
        self._autocast = device.type == "cuda"
        if self._autocast:
            self.unet = self.unet.to(memory_format=torch.channels_last)

    @classmethod
    def from_artifact(
        cls, model_dir: str | Path, device: str = "auto", dino_weights: str | os.PathLike | None = None
    ) -> Pipeline:
        unet, manifest = load_artifact(model_dir)
        dev = resolve_device(device)
        attention = load_attention_model(manifest.config, dino_weights, dev)
        if attention is not None and manifest.dino_weights_sha256:
            got = sha256_file(resolve_dino_weights(dino_weights))  # type: ignore[arg-type]
            if got != manifest.dino_weights_sha256:
                raise ArtifactError(
                    f"the DINO weights given differ from those {model_dir} was trained with "
                    f"(sha256 {got[:12]} != {manifest.dino_weights_sha256[:12]})"
                )
        return cls(manifest.config, unet, manifest.threshold, dev, attention, manifest.model_version)

    @torch.no_grad()
    def attention(self, images: torch.Tensor) -> torch.Tensor | None:
        if self.attention_model is None:
            return None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            return self.attention_model(images).float()

    @torch.no_grad()
    def reconstruct(self, composite: torch.Tensor) -> torch.Tensor:
        if self._autocast:
            composite = composite.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            return self.unet(composite).float()

    @torch.no_grad()
    def score_tensor(self, images: torch.Tensor, want_maps: bool = False, want_recon: bool = False) -> BatchResult:
        """Score a [B, 3, S, S] batch in [0, 1] (already resized to ``image_size``)."""
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected a [B, 3, {size}, {size}] batch, got {tuple(images.shape)}")
        images = images.to(self.device, non_blocking=True).float()
        sc = self.config.scoring
        if self.config.method == "riad":  # baseline: 12 masked passes, no excision
            from ..model import riad

            scores, maps, recon = riad.score(self.unet, images, sc, want_maps, forward=self.reconstruct)
            composite, ratio = images, torch.ones(images.shape[0])
        else:
            composite, ratio = excise_for(self.config, images, self.attention(images))
            recon = self.reconstruct(composite)
            scores, maps = ops.msgms(images, recon, sc.scales, sc.c, sc.median, sc.box, want_maps)
        scores_np = scores.float().cpu().numpy().astype(np.float32)
        return BatchResult(
            scores=scores_np,
            normalized=(scores_np / max(self.threshold, 1e-12)).astype(np.float32),
            is_anomaly=scores_np > self.threshold,
            mask_ratio=ratio.float().cpu().numpy().astype(np.float32),
            maps=maps.cpu() if maps is not None else None,
            recon=recon.cpu() if want_recon else None,
            composite=composite.cpu() if want_recon else None,
        )

    def score_arrays(self, arrays: list[np.ndarray], want_maps: bool = False) -> BatchResult:
        """Score decoded [H, W, 3] arrays of any size."""
        return self.score_tensor(to_model_input(arrays, self.config.image_size), want_maps=want_maps)
