"""Training one product model on normal images only (SPEC §1 "Training").

Attention maps are deterministic, so they are computed once per training image
and cached for every epoch. Part of the normal images is held out to calibrate
the decision threshold: ``threshold = mean + k·std`` of their scores (k = 3 by
default), never below their maximum — stored with the statistics in the manifest.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io.datasets import load_tensor, train_images
from ..model import riad
from ..model.artifact import Manifest, build_unet, save_artifact, sha256_file
from ..model.config import ModelConfig, TrainConfig, min_mosaic_scale
from ..model.mosaic_scale import MosaicEstimator, r10
from ..model.reference import combined_loss, saliency_mask
from ..model.saliency import resolve_dino_weights
from ..model.weightfree import SelfSaliency, WeightFreeSaliency
from .pipeline import (
    NORMAL_MAP_KEY,
    Pipeline,
    build_saliency,
    context_mask,
    excise_for,
    fit_normal_map,
    needs_dino,
    paste_context,
    resolve_device,
    two_pass_attention,
)

#: training images whose mean MSGMS map is the normal map (enough for a stable per-pixel mean)
NORMAL_MAP_IMAGES = 256


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
    images: torch.Tensor, attention: torch.Tensor | None, estimator: MosaicEstimator, floor: int = 1
) -> tuple[int, float]:
    """m̂ from the mean r10 over the training images (saliency region only when a mask exists), ≥ ``floor``."""
    mask = None if attention is None else saliency_mask(attention, tuple(images.shape[-2:]))
    value = float(r10(images, mask).mean())
    return max(floor, estimator.estimate(value)), value


@dataclass
class StepInputs:
    """What one optimisation step feeds the U-Net, compares against, and (``keep_context``) pastes back."""

    composite: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor | None = None


def corrupt(
    cfg: ModelConfig,
    unet: torch.nn.Module,
    saliency: torch.nn.Module | None,
    x: torch.Tensor,
    att: torch.Tensor | None,
) -> StepInputs:
    """The inputs of one step; two-pass variants see both their passes' inputs (training matches inference)."""
    if isinstance(saliency, SelfSaliency):
        with torch.no_grad():
            att, light, _ = two_pass_attention(saliency, unet, x, cfg.scoring)
        strong, _ = excise_for(cfg, x, att)
        mask = context_mask(cfg, x, att)
        if mask is not None:  # the light first pass mosaics everything: nothing to keep there (S = 1)
            mask = torch.cat([torch.ones_like(mask), mask])
        return StepInputs(torch.cat([light, strong]), torch.cat([x, x]), mask)
    composite, _ = excise_for(cfg, x, att)
    return StepInputs(composite, x, context_mask(cfg, x, att))


def step_loss(cfg, unet, saliency, x, att, gen, weights) -> torch.Tensor:
    if cfg.method == "riad":
        return combined_loss(x, riad.training_reconstruction(unet, x, gen), weights, cfg.scoring.scales)
    inputs = corrupt(cfg, unet, saliency, x, att)
    recon = paste_context(unet(inputs.composite), inputs.target, inputs.mask)
    return combined_loss(inputs.target, recon, weights, cfg.scoring.scales)


@torch.no_grad()
def heldout_loss(cfg, unet, saliency, images, attention, weights, batch: int = 16) -> float:
    """Mean training loss on held-out normal images, in eval mode, with a fixed generator (learning curve)."""
    was_training = unet.training
    unet.eval()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for i in range(0, images.shape[0], batch):
        att = None if attention is None else attention[i : i + batch]
        x = images[i : i + batch]
        losses.append(float(step_loss(cfg, unet, saliency, x, att, gen, weights)) * x.shape[0])
    unet.train(was_training)
    return sum(losses) / max(1, images.shape[0])


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
    max_minutes: float | None = None,
    curve_every_minutes: float | None = None,
    on_curve: Callable[[dict, Pipeline], dict | None] | None = None,
) -> Path:
    """Train, calibrate and save one model directory; returns its path.

    ``mosaic_scale=None`` estimates m from the training images (``--mosaic-scale auto``),
    never below :func:`min_mosaic_scale`. Training stops at the first of
    ``train_cfg.epochs``, ``max_steps`` and ``max_minutes`` (a wall-clock budget, so
    that variants of different cost per step can be compared at equal time).
    Every ``curve_every_minutes`` the held-out loss is recorded in ``curve.jsonl``;
    ``on_curve(record, pipeline)`` may add fields to the record (a study's test
    AUROC, for the record only).
    """
    torch.manual_seed(train_cfg.seed)
    dev = resolve_device(device)
    started = time.time()
    files = train_images(data_root, category)
    train_idx, hold_idx = split_holdout(len(files), train_cfg.holdout_fraction, train_cfg.seed)
    images = load_tensor(files, model_cfg.image_size, desc="loading train images", progress=progress)

    saliency = build_saliency(model_cfg, dino_weights, dev)
    if isinstance(saliency, WeightFreeSaliency):
        model_cfg.saliency_params = saliency.params()
        if saliency.fitted:
            saliency.fit(images[train_idx].to(dev))
    attention = None
    if saliency is not None and not isinstance(saliency, SelfSaliency):
        attention = compute_attention(saliency, images, dev)

    estimated: dict = {}
    floor = min_mosaic_scale(model_cfg.image_size, model_cfg.saliency)
    if mosaic_scale is None:
        est = MosaicEstimator()
        m, r10_value = estimate_mosaic_scale(
            images[train_idx], None if attention is None else attention[train_idx], est, floor
        )
        estimated = {"r10": r10_value, "estimator": asdict(est), "floor": floor}
        mosaic_scale = m
    model_cfg.mosaic_scale = int(mosaic_scale)

    unet = build_unet(model_cfg).to(dev)
    opt = torch.optim.Adam(unet.parameters(), lr=train_cfg.lr)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / train_cfg.batch_size))
    sched = make_scheduler(opt, train_cfg, steps_per_epoch)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    total = (
        train_cfg.epochs * steps_per_epoch if max_steps is None else min(max_steps, train_cfg.epochs * steps_per_epoch)
    )
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    held_out = images[hold_idx].to(dev)
    held_att = None if attention is None else attention[hold_idx].to(dev)
    curve: list[dict] = []
    next_curve = started + 60.0 * curve_every_minutes if curve_every_minutes else None
    curve_path = Path(out_dir) / "curve.jsonl"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    curve_path.unlink(missing_ok=True)

    def record_curve() -> None:
        rec = {
            "step": step,
            "minutes": round((time.time() - started) / 60.0, 3),
            "train_loss": float(np.mean(losses[-20:])) if losses else None,
            "heldout_loss": heldout_loss(model_cfg, unet, saliency, held_out, held_att, train_cfg.loss_weights),
            "lr": opt.param_groups[0]["lr"],
        }
        if on_curve is not None:
            unet.eval()
            rec.update(on_curve(rec, Pipeline(model_cfg, unet, 1.0, dev, saliency)) or {})
            unet.train()
        curve.append(rec)
        with open(curve_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    step, losses, stop_reason = 0, [], "epochs"
    bar = tqdm(total=total, desc=f"training {category}", disable=not progress)
    unet.train()
    while step < total and stop_reason == "epochs":
        for batch in torch.randperm(len(train_idx), generator=gen).split(train_cfg.batch_size):
            if step >= total:
                stop_reason = "max_steps" if max_steps is not None and step >= max_steps else "epochs"
                break
            if deadline is not None and time.time() >= deadline:
                stop_reason = "max_minutes"
                break
            if batch.numel() < 2:  # BatchNorm needs two samples
                continue
            idx = torch.from_numpy(train_idx)[batch]
            x = images[idx].to(dev)
            att = None if attention is None else attention[idx].to(dev)
            loss = step_loss(model_cfg, unet, saliency, x, att, gen, train_cfg.loss_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if next_curve is not None and time.time() >= next_curve:
                record_curve()
                next_curve = time.time() + 60.0 * curve_every_minutes
    bar.close()
    if curve_every_minutes:
        record_curve()
    unet.eval()

    pipe = Pipeline(model_cfg, unet, threshold=1.0, device=dev, attention_model=saliency)
    extras: dict[str, torch.Tensor] = {}
    if model_cfg.scoring.normal_map:  # from training images only: the held-out ones calibrate the threshold
        pipe.normal_map = fit_normal_map(pipe, images[train_idx[:NORMAL_MAP_IMAGES]])
        extras[NORMAL_MAP_KEY] = pipe.normal_map
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
            "stop_reason": stop_reason,
            "max_minutes": max_minutes,
            "final_loss": losses[-1] if losses else None,
            "final_heldout_loss": curve[-1]["heldout_loss"] if curve else None,
            "seconds": round(time.time() - started, 1),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "mosaic_estimate": estimated,
        },
        dino_weights_sha256=sha256_file(dino_path) if dino_path else None,
    )
    if isinstance(saliency, WeightFreeSaliency):
        extras.update({f"saliency.{k}": v for k, v in saliency.state_dict().items()})
    return save_artifact(out_dir, unet.cpu(), manifest, extras)
