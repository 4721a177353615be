"""Building a :class:`~.container.ProductModel`: its parts fresh from a config, or loaded from a model directory.

What a saliency variant gets (DINO from its weights file, a weight-free module with its parameters,
nothing) is read from its spec in :mod:`.registry`, never from its name. Loading checks everything
the artifact promises: the weights hash (:mod:`.artifact`), that every part the manifest's config
describes is stored and fits, and that the DINO weights given are those the model was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .artifact import ArtifactError, Manifest, build_unet, load_manifest, read_weights, sha256_file
from .config import ModelConfig
from .container import ProductModel
from .head import AnomalyHead
from .registry import DINO_ENV, saliency_names, saliency_spec
from .saliency import DinoAttention, SaliencyModule, build_dino, resolve_dino_weights
from .weightfree import create_saliency


def build_saliency(
    name: str, params: dict[str, Any] | None = None, dino_weights: str | os.PathLike | None = None
) -> SaliencyModule | None:
    """The module that yields a variant's attention grids (None for a variant without attention).

    DINO variants need a local weights file (a clear error otherwise); weight-free variants come from
    :mod:`.weightfree` with their manifest parameters (fresh: a fitted one is fitted or loaded after).
    """
    spec = saliency_spec(name)
    if not spec.attention:
        return None
    if spec.needs_dino:
        path = resolve_dino_weights(dino_weights)
        if path is None:
            raise ArtifactError(
                f"saliency '{name}' needs DINO ViT-S/8 weights: pass --dino-weights PATH or set {DINO_ENV} "
                f"(or train with a weight-free variant: --saliency {'|'.join(saliency_names(weight_free=True))})"
            )
        return DinoAttention(build_dino(path))
    return create_saliency(name, params)


def build_model(cfg: ModelConfig, dino_weights: str | os.PathLike | None = None) -> ProductModel:
    """Every part a config describes, untrained: the U-Net, the saliency (RIAD has none: its masks are
    random), the head when the config scores with one, a zero normal map when it subtracts one."""
    saliency = None if cfg.method == "riad" else build_saliency(cfg.saliency, cfg.saliency_params, dino_weights)
    head = AnomalyHead(cfg.head_width) if cfg.head else None
    size = cfg.image_size
    normal_map = torch.zeros(1, 1, size, size) if cfg.scoring.normal_map else None
    return ProductModel(build_unet(cfg), saliency, head, normal_map)


def load_model(
    model_dir: str | Path, dino_weights: str | os.PathLike | None = None, verify: bool = True
) -> tuple[ProductModel, Manifest]:
    """A model directory's container (on the CPU, in eval mode) and manifest; :class:`ArtifactError` when a
    part is missing, does not fit, or the DINO weights given are not those it was trained with."""
    manifest = load_manifest(model_dir)
    state = read_weights(model_dir, manifest, verify)
    model = build_model(manifest.config, dino_weights)
    try:
        model.load_stored(state)
    except ValueError as exc:
        raise ArtifactError(f"{model_dir}: {exc}") from exc
    if model.saliency is not None and saliency_spec(manifest.config.saliency).needs_dino:
        check_dino_weights(manifest, dino_weights, model_dir)
    return model.eval(), manifest


def check_dino_weights(manifest: Manifest, dino_weights: str | os.PathLike | None, model_dir: str | Path) -> None:
    """Refuse DINO weights other than those the model was trained with (their hash is in the manifest)."""
    path = resolve_dino_weights(dino_weights)
    if not manifest.dino_weights_sha256 or path is None:
        return
    got = sha256_file(path)
    if got != manifest.dino_weights_sha256:
        raise ArtifactError(
            f"the DINO weights given differ from those {model_dir} was trained with "
            f"(sha256 {got[:12]} != {manifest.dino_weights_sha256[:12]})"
        )


def dino_weights_hash(saliency: str, dino_weights: str | os.PathLike | None) -> str | None:
    """What the manifest records as ``dino_weights_sha256``: the hash of the file a DINO variant ran with."""
    if not saliency_spec(saliency).needs_dino:
        return None
    path = resolve_dino_weights(dino_weights)
    return sha256_file(path) if path else None
