"""Training one product model on normal images only (SPEC §1 "Training").

Attention maps are deterministic, so they are computed once per training image
and cached for every epoch. Part of the normal images is held out to calibrate
the decision threshold: ``threshold = mean + k·std`` of their scores (k = 3 by
default), never below their maximum — stored with the statistics in the manifest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io.datasets import train_images
from ..model import riad
from ..model.artifact import Manifest, build_unet, save_artifact, sha256_file
from ..model.config import ModelConfig, TrainConfig, min_mosaic_scale
from ..model.mosaic_scale import MosaicEstimator, r10
from ..model.reference import combined_loss, saliency_mask
from ..model.saliency import resolve_dino_weights
from ..model.weightfree import SelfSaliency, WeightFreeSaliency
from .augment import (
    augment,
    augmentations,
    batches_of,
    center_crops,
    epoch_order,
    random_crops,
    step_generator,
    steps_per_epoch,
)
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .pipeline import (
    NORMAL_MAP_KEY,
    Images,
    Pipeline,
    build_saliency,
    context_mask,
    excise_for,
    fit_normal_map,
    load_images,
    needs_dino,
    paste_context,
    resolve_device,
    select,
    two_pass_attention,
)
from .thresholds import Policy, good_score_stats, image_threshold, pixel_quantile_grid
from .visualize import line_chart_png

#: training images whose mean MSGMS map is the normal map (enough for a stable per-pixel mean)
NORMAL_MAP_IMAGES = 256


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/holdout index split; at least 2 images on each side when possible."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = min(max(2, int(round(n * fraction))), max(n - 2, 0))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def calibrate_threshold(scores: np.ndarray, sigmas: float) -> tuple[float, dict]:
    """Decision threshold from held-out normal scores by the ``sigma:K`` policy: max(mean + k·std, max).

    The statistics keep the scores themselves, so ``ear-stream threshold`` can apply another policy later.
    """
    if scores.size == 0:
        raise ValueError("no held-out images to calibrate the threshold")
    threshold = image_threshold(Policy("sigma", sigmas), scores)
    return threshold, {"rule": f"max(mean + {sigmas:g}*std, max) of held-out normal scores", **good_score_stats(scores)}


#: held-out map pixels kept for the pixel quantile grid (uniform subsample, fixed seed)
MAX_CALIBRATION_PIXELS = 2_000_000


def calibrate(pipe: Pipeline, held_images, sigmas: float, batch: int = 16) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    """Score the held-out good images once: the image threshold, its statistics and the pixel statistics."""
    scores, pixels = [], []
    for i in range(0, len(held_images), batch):
        res = pipe.score_images(held_images[i : i + batch], want_maps=True)
        scores.append(res.scores)
        pixels.extend(m.float().flatten().numpy() for m in res.maps)
    threshold, stats = calibrate_threshold(np.concatenate(scores), sigmas)
    values = np.concatenate(pixels) if pixels else np.zeros(1)
    if values.size > MAX_CALIBRATION_PIXELS:
        values = np.random.default_rng(0).choice(values, MAX_CALIBRATION_PIXELS, replace=False)
    stats.update(
        pixel_mean=float(values.mean()), pixel_std=float(values.std()), pixel_quantiles=pixel_quantile_grid(values)
    )
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
class TrainingSet:
    """The training images as the model sees them.

    Whole-image models: one resized [N, 3, S, S] tensor, attention cached per image
    when nothing changes an image between epochs. Native-resolution models
    (``config.scale``): a list of [3, H, W] images, a fresh random S×S crop of each
    per step, attention computed on the crop.
    """

    images: Images
    crop: int
    attention: torch.Tensor | None = None

    @property
    def native(self) -> bool:
        return isinstance(self.images, list)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.native:
            return random_crops([self.images[int(i)] for i in idx], self.crop, gen), None
        return self.images[idx], None if self.attention is None else self.attention[idx]

    def fixed(self, idx) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """Deterministic views of some images (centre crops when native)."""
        if self.native:
            return center_crops([self.images[int(i)] for i in idx], self.crop)
        return self.images[torch.as_tensor(idx)]


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
    """One step's loss; attention not given (not cached) is computed on ``x`` here."""
    if att is None and saliency is not None and not isinstance(saliency, SelfSaliency):
        with torch.no_grad():
            att = saliency(x).float()
    if cfg.method == "riad":
        return combined_loss(x, riad.training_reconstruction(unet, x, gen), weights, cfg.scoring.scales)
    inputs = corrupt(cfg, unet, saliency, x, att)
    recon = paste_context(unet(inputs.composite), inputs.target, inputs.mask)
    return combined_loss(inputs.target, recon, weights, cfg.scoring.scales)


@torch.no_grad()
def heldout_loss(cfg, unet, saliency, images, attention, weights, batch: int = 16) -> float:
    """Mean training loss on held-out normal images, in eval mode, with a fixed generator (learning curve).

    ``attention``: the held-out images' attention, computed once per run (None for variants without).
    """
    was_training = unet.training
    unet.eval()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch]
        att = None if attention is None else attention[i : i + batch]
        losses.append(float(step_loss(cfg, unet, saliency, x, att, gen, weights)) * x.shape[0])
    unet.train(was_training)
    return sum(losses) / max(1, images.shape[0])


def compile_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with inductor, or ``EAR_STREAM_COMPILE_BACKEND`` (tests use aot_eager: same graph
    capture and autograd, without minutes of C++ code generation on a small CPU)."""
    return torch.compile(unet, backend=os.environ.get("EAR_STREAM_COMPILE_BACKEND", "inductor"))


def write_curve_png(curve: list[dict], path: Path) -> None:
    """curve.png: train and held-out loss against the step."""
    series = {
        "train loss": [(r["step"], r["train_loss"]) for r in curve if r.get("train_loss") is not None],
        "held-out loss": [(r["step"], r["heldout_loss"]) for r in curve if r.get("heldout_loss") is not None],
    }
    path.write_bytes(line_chart_png(series, title="learning curve", xlabel="step", ylabel="loss"))


def _comparable(cfg: ModelConfig | TrainConfig) -> dict:
    """A config as JSON types (tuples → lists), to compare a checkpoint's with a run's."""
    return json.loads(json.dumps(asdict(cfg)))


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
    resume: bool = False,
) -> Path:
    """Train, calibrate and save one model directory; returns its path.

    ``mosaic_scale=None`` estimates m from the training images (``--mosaic-scale auto``),
    never below :func:`min_mosaic_scale`. Training stops at the first of
    ``train_cfg.epochs``, ``max_steps``, ``max_minutes`` (a wall-clock budget, so
    that variants of different cost per step can be compared at equal time) and
    ``train_cfg.patience`` evaluations without a better held-out loss (the best
    weights are then kept). Every ``train_cfg.eval_every`` steps and every
    ``curve_every_minutes`` the held-out loss goes to ``curve.jsonl`` and
    ``curve.png``; ``on_curve(record, pipeline)`` may add fields (a study's test
    AUROC, for the record only).

    Every random draw of a step comes from a generator seeded by (seed, step), so
    ``resume=True`` continues from ``checkpoint.pt`` to the same weights an
    uninterrupted run reaches (bit-identical on CPU with the same thread count).
    """
    torch.manual_seed(train_cfg.seed)
    dev = resolve_device(device)
    on_cuda = dev.type == "cuda"
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = train_images(data_root, category)
    train_idx, hold_idx = split_holdout(len(files), train_cfg.holdout_fraction, train_cfg.seed)
    data = TrainingSet(
        load_images(model_cfg, files, desc="loading train images", progress=progress), model_cfg.image_size
    )
    if on_cuda:  # images stay on the device: no host→device copy per step
        data.images = [i.to(dev) for i in data.images] if data.native else data.images.to(dev)
    fixed_train = data.fixed(train_idx)

    saliency = build_saliency(model_cfg, dino_weights, dev)
    if isinstance(saliency, WeightFreeSaliency):
        model_cfg.saliency_params = saliency.params()
        if saliency.fitted:
            saliency.fit(fixed_train.to(dev))
    plain_saliency = saliency is not None and not isinstance(saliency, SelfSaliency)
    if plain_saliency and not data.native and not augmentations(train_cfg):  # nothing changes an image: cache
        data.attention = compute_attention(saliency, data.images, dev)

    estimated: dict = {}
    floor = min_mosaic_scale(model_cfg.image_size, model_cfg.saliency)
    if mosaic_scale is None:
        fixed_att = None
        if plain_saliency:
            cached = data.attention
            fixed_att = cached[train_idx] if cached is not None else compute_attention(saliency, fixed_train, dev)
        est = MosaicEstimator()
        m, r10_value = estimate_mosaic_scale(fixed_train.cpu(), None if fixed_att is None else fixed_att, est, floor)
        estimated = {"r10": r10_value, "estimator": asdict(est), "floor": floor}
        mosaic_scale = m
    model_cfg.mosaic_scale = int(mosaic_scale)

    unet = build_unet(model_cfg).to(dev)
    if on_cuda:
        unet = unet.to(memory_format=torch.channels_last)
    forward = compile_unet(unet) if train_cfg.compile else unet
    opt = torch.optim.Adam(unet.parameters(), lr=train_cfg.lr)
    per_epoch = steps_per_epoch(len(train_idx), train_cfg.batch_size)
    if per_epoch == 0:
        raise ValueError(f"{len(train_idx)} training image(s) after the hold-out: need at least 2")
    sched = make_scheduler(opt, train_cfg, per_epoch)
    total = train_cfg.epochs * per_epoch if max_steps is None else min(max_steps, train_cfg.epochs * per_epoch)
    held_out = data.fixed(hold_idx).to(dev)
    held_att = compute_attention(saliency, held_out, dev).to(dev) if plain_saliency else None
    curve_path, ckpt_path = out_dir / "curve.jsonl", out_dir / CHECKPOINT_NAME

    step, losses, elapsed_before = 0, [], 0.0
    best: dict | None = None  # {"loss", "step", "state"}: the weights early stopping keeps
    since_best = 0
    if resume:
        ck = load_checkpoint(ckpt_path)
        if ck["model_config"] != _comparable(model_cfg) or ck["train_config"] != _comparable(train_cfg):
            raise CheckpointError(
                f"{ckpt_path} was written for another configuration: resume with the same options as the killed run"
            )
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        step, losses, elapsed_before = int(ck["step"]), list(ck["losses"]), float(ck["elapsed"])
        best, since_best = ck["best"], int(ck["since_best"])
        kept = [r for r in _read_curve(curve_path) if r["step"] <= step]  # what the killed run wrote after is redone
        curve_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    else:
        curve_path.unlink(missing_ok=True)
        ckpt_path.unlink(missing_ok=True)
    curve = _read_curve(curve_path)

    def elapsed() -> float:
        return elapsed_before + time.time() - started

    def record_curve() -> dict:
        rec = {
            "step": step,
            "minutes": round(elapsed() / 60.0, 3),
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
        write_curve_png(curve, out_dir / "curve.png")
        return rec

    def keep_if_best(rec: dict) -> None:
        """Keep a copy of the weights when the held-out loss improves; count evaluations since it last did."""
        nonlocal best, since_best
        if best is None or rec["heldout_loss"] < best["loss"]:
            state = {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}
            best, since_best = {"loss": rec["heldout_loss"], "step": step, "state": state}, 0
        else:
            since_best += 1

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "step": step,
                "unet": unet.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": None if sched is None else sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "losses": losses[-20:],
                "elapsed": elapsed(),
                "best": best,
                "since_best": since_best,
                "model_config": _comparable(model_cfg),
                "train_config": _comparable(train_cfg),
            },
        )

    deadline = None if max_minutes is None else 60.0 * max_minutes
    next_curve = elapsed() + 60.0 * curve_every_minutes if curve_every_minutes else None
    next_ckpt = elapsed() + 60.0 * train_cfg.checkpoint_minutes if train_cfg.checkpoint_minutes else None
    order_epoch, order = -1, []
    stop_reason = None
    bar = tqdm(total=total, initial=step, desc=f"training {category}", disable=not progress)
    unet.train()
    while stop_reason is None:
        if step >= total:
            stop_reason = "max_steps" if max_steps is not None and step >= max_steps else "epochs"
            break
        if deadline is not None and elapsed() >= deadline:
            stop_reason = "max_minutes"
            break
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = (
                epoch,
                batches_of(epoch_order(len(train_idx), train_cfg.seed, epoch), train_cfg.batch_size),
            )
        gen = step_generator(train_cfg.seed, step)
        idx = torch.from_numpy(train_idx)[order[position]]
        x, att = data.batch(idx, gen)
        x = augment(x, train_cfg, gen).to(dev, non_blocking=True)
        att = None if att is None else att.to(dev)
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            loss = step_loss(model_cfg, forward, saliency, x, att, gen, train_cfg.loss_weights).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses = [*losses[-19:], loss.item()]
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if train_cfg.eval_every and step % train_cfg.eval_every == 0:
            keep_if_best(record_curve())
            if train_cfg.patience and since_best >= train_cfg.patience:
                stop_reason = "patience"
        elif next_curve is not None and elapsed() >= next_curve:
            record_curve()
            next_curve = elapsed() + 60.0 * curve_every_minutes
        ckpt_due = train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0
        if ckpt_due or (next_ckpt is not None and elapsed() >= next_ckpt):
            checkpoint()
            if next_ckpt is not None:
                next_ckpt = elapsed() + 60.0 * train_cfg.checkpoint_minutes
    bar.close()
    if (curve_every_minutes or train_cfg.eval_every) and (not curve or curve[-1]["step"] != step):
        rec = record_curve()
        if train_cfg.eval_every:  # the last weights compete with the best ones too
            keep_if_best(rec)
    if best is not None:  # early stopping keeps the best held-out weights, not the last ones
        unet.load_state_dict(best["state"])
    unet.eval()

    pipe = Pipeline(model_cfg, unet, threshold=1.0, device=dev, attention_model=saliency)
    extras: dict[str, torch.Tensor] = {}
    if model_cfg.scoring.normal_map:  # from training images only: the held-out ones calibrate the threshold
        pipe.normal_map = fit_normal_map(pipe, data.images[train_idx[:NORMAL_MAP_IMAGES]])
        extras[NORMAL_MAP_KEY] = pipe.normal_map
    threshold, stats = calibrate(pipe, select(data.images, hold_idx), train_cfg.threshold_sigmas)

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
            "max_steps": max_steps,
            "augmentations": augmentations(train_cfg),
            "best_step": None if best is None else best["step"],
            "best_heldout_loss": None if best is None else best["loss"],
            "resumed": bool(resume),
            "final_loss": losses[-1] if losses else None,
            "final_heldout_loss": curve[-1]["heldout_loss"] if curve else None,
            "seconds": round(elapsed(), 1),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "precision": "bf16 autocast, channels_last" if on_cuda else "fp32",
            "mosaic_estimate": estimated,
        },
        dino_weights_sha256=sha256_file(dino_path) if dino_path else None,
        threshold_policy=f"sigma:{train_cfg.threshold_sigmas:g}",
    )
    if isinstance(saliency, WeightFreeSaliency):
        extras.update({f"saliency.{k}": v for k, v in saliency.state_dict().items()})
    return save_artifact(out_dir, unet.cpu(), manifest, extras)


def _read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
