"""Training one product model on normal images only (SPEC §1 "Training").

Attention maps are deterministic, so they are computed once per training image
and cached for every epoch. Part of the normal images is held out to calibrate
the decision threshold: ``threshold = mean + k·std`` of their scores (k = 3 by
default), never below their maximum — stored with the statistics in the manifest.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io.datasets import load_tensor, train_images
from ..model import riad
from ..model.artifact import Manifest, save_artifact, sha256_file
from ..model.config import ModelConfig, TrainConfig
from ..model.mosaic_scale import MosaicEstimator, r10
from ..model.reference import combined_loss, saliency_mask
from ..model.saliency import resolve_dino_weights
from ..model.unet import UNet
from .pipeline import Pipeline, excise_for, load_attention_model, needs_dino, resolve_device


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/holdout index split; at least 2 images on each side when possible."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = min(max(2, int(round(n * fraction))), max(n - 2, 0))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def calibrate_threshold(scores: np.ndarray, sigmas: float) -> tuple[float, dict]:
    """Decision threshold from held-out normal scores: max(mean + k·std, max)."""
    if scores.size == 0:
        raise ValueError("no held-out images to calibrate the threshold")
    mean, std = float(scores.mean()), float(scores.std())
    threshold = max(mean + sigmas * std, float(scores.max()))
    stats = {
        "rule": f"max(mean + {sigmas:g}*std, max) of held-out normal scores",
        "n": int(scores.size),
        "mean": mean,
        "std": std,
        "min": float(scores.min()),
        "max": float(scores.max()),
        "p50": float(np.quantile(scores, 0.5)),
        "p95": float(np.quantile(scores, 0.95)),
    }
    return threshold, stats


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """fixed, linear warm-up (Goyal et al.) or SGDR (cosine with restarts every epoch ×2)."""
    if cfg.schedule == "fixed":
        return None
    if cfg.schedule == "warmup":
        warm = max(1, cfg.warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, steps_per_epoch), T_mult=2)


def compute_attention(attention_model, images: torch.Tensor, device: torch.device, batch: int = 32) -> torch.Tensor:
    """Attention maps for a whole image set, computed once (the cache of SPEC §1)."""
    out = [attention_model(images[i : i + batch].to(device)).cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


def estimate_mosaic_scale(
    images: torch.Tensor, attention: torch.Tensor | None, estimator: MosaicEstimator
) -> tuple[int, float]:
    """m̂ from the mean r10 over the training images (saliency region only when a mask exists)."""
    mask = None if attention is None else saliency_mask(attention, tuple(images.shape[-2:]))
    value = float(r10(images, mask).mean())
    return estimator.estimate(value), value


def train_model(
    data_root: str | Path,
    category: str,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    mosaic_scale: int | None = None,
    dino_weights: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    max_steps: int | None = None,
) -> Path:
    """Train, calibrate and save one model directory; returns its path.

    ``mosaic_scale=None`` estimates m from the training images (``--mosaic-scale auto``).
    ``max_steps`` caps the optimisation steps (tests and quick demos).
    """
    torch.manual_seed(train_cfg.seed)
    dev = resolve_device(device)
    started = time.time()
    files = train_images(data_root, category)
    train_idx, hold_idx = split_holdout(len(files), train_cfg.holdout_fraction, train_cfg.seed)
    images = load_tensor(files, model_cfg.image_size, desc="loading train images", progress=progress)

    attention_model = load_attention_model(model_cfg, dino_weights, dev)
    attention = None
    if attention_model is not None:
        attention = compute_attention(attention_model, images, dev)

    estimated: dict = {}
    if mosaic_scale is None:
        m, r10_value = estimate_mosaic_scale(
            images[train_idx], None if attention is None else attention[train_idx], MosaicEstimator()
        )
        estimated = {"r10": r10_value, "estimator": asdict(MosaicEstimator())}
        mosaic_scale = m
    model_cfg.mosaic_scale = int(mosaic_scale)

    unet = UNet(base_channels=model_cfg.base_channels, kernel_size=model_cfg.kernel_size).to(dev)
    opt = torch.optim.Adam(unet.parameters(), lr=train_cfg.lr)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / train_cfg.batch_size))
    sched = make_scheduler(opt, train_cfg, steps_per_epoch)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    total = (
        train_cfg.epochs * steps_per_epoch if max_steps is None else min(max_steps, train_cfg.epochs * steps_per_epoch)
    )
    step, losses = 0, []
    bar = tqdm(total=total, desc=f"training {category}", disable=not progress)
    unet.train()
    while step < total:
        for batch in torch.randperm(len(train_idx), generator=gen).split(train_cfg.batch_size):
            if step >= total:
                break
            if batch.numel() < 2:  # BatchNorm needs two samples
                continue
            idx = torch.from_numpy(train_idx)[batch]
            x = images[idx].to(dev)
            att = None if attention is None else attention[idx].to(dev)
            if model_cfg.method == "riad":
                recon = riad.training_reconstruction(unet, x, gen)
            else:
                composite, _ = excise_for(model_cfg, x, att)
                recon = unet(composite)
            loss = combined_loss(x, recon, train_cfg.loss_weights, model_cfg.scoring.scales)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    unet.eval()

    pipe = Pipeline(model_cfg, unet, threshold=1.0, device=dev, attention_model=attention_model)
    held_out = images[hold_idx]
    hold_scores = np.concatenate([pipe.score_tensor(held_out[i : i + 16]).scores for i in range(0, len(hold_idx), 16)])
    threshold, stats = calibrate_threshold(hold_scores, train_cfg.threshold_sigmas)

    dino_path = resolve_dino_weights(dino_weights) if needs_dino(model_cfg) else None
    manifest = Manifest(
        config=model_cfg,
        threshold=threshold,
        calibration=stats,
        training={
            **{k: v for k, v in asdict(train_cfg).items()},
            "category": category,
            "n_train": int(len(train_idx)),
            "n_holdout": int(len(hold_idx)),
            "steps": step,
            "final_loss": losses[-1] if losses else None,
            "seconds": round(time.time() - started, 1),
            "device": str(dev),
            "mosaic_estimate": estimated,
        },
        dino_weights_sha256=sha256_file(dino_path) if dino_path else None,
    )
    return save_artifact(out_dir, unet.cpu(), manifest)
