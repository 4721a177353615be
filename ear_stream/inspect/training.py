"""Training one product model on normal images only (docs/design.md, "Training").

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

from ..errors import ConfigError
from ..io.datasets import train_images
from ..model import riad
from ..model.artifact import Manifest, build_unet, save_artifact, sha256_file
from ..model.config import ModelConfig, TrainConfig, max_mosaic_scale, min_mosaic_scale
from ..model.head import HEAD_PREFIX, AnomalyHead, focal_dice_loss, head_inputs
from ..model.mosaic_scale import MosaicEstimator, r10
from ..model.precision import compile_module, resolve_precision
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
from .calibration import calibrate, split_holdout
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
from .recovery import recovery_check
from .simulate import simulate_defects
from .visualize import line_chart_png

#: training images whose mean MSGMS map is the normal map (enough for a stable per-pixel mean)
NORMAL_MAP_IMAGES = 256


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """fixed, linear warm-up (Goyal et al.) or SGDR (cosine with restarts every epoch ×2)."""
    if cfg.schedule == "fixed":
        return None
    if cfg.schedule == "warmup":
        warm = max(1, cfg.warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, steps_per_epoch), T_mult=2)


def compute_attention(attention_model, images: torch.Tensor, device: torch.device, batch: int = 32) -> torch.Tensor:
    """Attention maps for a whole image set, computed once (the attention cache of docs/design.md, "Training")."""
    out = [attention_model(images[i : i + batch].to(device)).cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


def estimate_mosaic_scale(
    images: torch.Tensor, attention: torch.Tensor | None, estimator: MosaicEstimator, floor: int = 1
) -> tuple[int, float]:
    """m̂ from the mean r10 over the training images (saliency region only when a mask exists).

    Bounded below by ``floor`` and above by :func:`max_mosaic_scale` (at least 4×4 cells).
    """
    mask = None if attention is None else saliency_mask(attention, tuple(images.shape[-2:]))
    value = float(r10(images, mask).mean())
    ceiling = max_mosaic_scale(int(images.shape[-1]))
    return min(ceiling, max(floor, estimator.estimate(value))), value


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
    """What one optimisation step feeds the U-Net, compares against, and (``keep_context``) pastes back.

    ``context``: the input the unexcised pixels are pasted from (the corrupted image, as at
    inference); ``target``: the clean image the recovery must return.
    """

    composite: torch.Tensor
    target: torch.Tensor
    context: torch.Tensor
    mask: torch.Tensor | None = None


def corrupt(
    cfg: ModelConfig,
    unet,  # type: ignore[no-untyped-def]
    saliency: torch.nn.Module | None,
    x: torch.Tensor,
    att: torch.Tensor | None,
    clean: torch.Tensor | None = None,
) -> StepInputs:
    """The inputs of one step; two-pass variants see both their passes' inputs (training matches inference).

    ``x`` is what the model is shown (a simulated defect included), ``clean`` what it must recover
    (default ``x``).
    """
    clean = x if clean is None else clean
    if isinstance(saliency, SelfSaliency):
        with torch.no_grad():
            att, light, _ = two_pass_attention(saliency, unet, x, cfg.scoring)
        strong, _ = excise_for(cfg, x, att)
        mask = context_mask(cfg, x, att)
        if mask is not None:  # the light first pass mosaics everything: nothing to keep there (S = 1)
            mask = torch.cat([torch.ones_like(mask), mask])
        return StepInputs(torch.cat([light, strong]), torch.cat([clean, clean]), torch.cat([x, x]), mask)
    composite, _ = excise_for(cfg, x, att)
    return StepInputs(composite, clean, x, context_mask(cfg, x, att))


@dataclass
class StepModules:
    """What a training step runs: the U-Net forward (precision applied), the saliency, the optional head."""

    forward: object  # callable: composite → reconstruction in fp32
    saliency: torch.nn.Module | None
    head: object | None = None  # callable: head inputs → logits in fp32


def step_loss(
    cfg: ModelConfig, tcfg: TrainConfig, mods: StepModules, x: torch.Tensor, att, gen: torch.Generator
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """One step's loss; attention not given (not cached) is computed here, on the image the model is shown.

    With ``tcfg.simulate`` a share of the batch gets a simulated defect first: the
    U-Net must return the clean image (its error inside the defect weighs
    ``1 + defect_weight``), and the head, when the model has one, must segment it.
    """
    saliency = mods.saliency
    if cfg.method == "riad":
        return combined_loss(
            x, riad.training_reconstruction(mods.forward, x, gen), tcfg.loss_weights, cfg.scoring.scales
        )
    clean, defect = x, None
    if tcfg.simulate > 0:
        sim = simulate_defects(x, gen, tcfg.simulate)
        x, defect, att = sim.images, sim.mask, None  # attention of the corrupted image, as at inference
    if att is None and saliency is not None and not isinstance(saliency, SelfSaliency):
        with torch.no_grad():
            att = saliency(x).float()
    inputs = corrupt(cfg, mods.forward, saliency, x, att, clean)
    recon = paste_context(mods.forward(inputs.composite), inputs.context, inputs.mask)
    loss = combined_loss(inputs.target, recon, tcfg.loss_weights, cfg.scoring.scales)
    strong = recon[-x.shape[0] :]  # two-pass variants: the second (scored) pass
    if defect is not None and tcfg.defect_weight > 0 and defect.sum() > 0:
        err = (strong - clean).abs().mean(dim=1, keepdim=True)
        loss = loss + tcfg.defect_weight * (err * defect).sum() / defect.sum()
    if mods.head is not None:
        target = torch.zeros_like(x[:, :1]) if defect is None else defect
        logits = mods.head(head_inputs(x, strong.detach(), cfg.scoring))
        loss = loss + focal_dice_loss(logits, target)
    return loss


@torch.no_grad()
def heldout_loss(cfg, tcfg, mods: StepModules, modules, images, attention, batch: int = 16) -> float:  # type: ignore[no-untyped-def]
    """Mean training loss on held-out normal images, in eval mode, with a fixed generator (learning curve).

    ``attention``: the held-out images' attention, computed once per run (None for variants without;
    unused when defects are simulated, since they change the image). ``modules``: what to put in eval mode.
    """
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch]
        att = None if attention is None else attention[i : i + batch]
        losses.append(float(step_loss(cfg, tcfg, mods, x, att, gen)) * x.shape[0])
    for m, flag in zip(modules, was_training, strict=True):
        m.train(flag)
    return sum(losses) / max(1, images.shape[0])


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
    precision = resolve_precision(train_cfg.precision, dev)
    if mosaic_scale is not None and mosaic_scale > max_mosaic_scale(model_cfg.image_size):
        raise ConfigError(
            f"mosaic scale {mosaic_scale} leaves fewer than 4×4 cells at {model_cfg.image_size} px: "
            f"use at most {max_mosaic_scale(model_cfg.image_size)} (or auto)"
        )
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
    changes_images = bool(augmentations(train_cfg)) or train_cfg.simulate > 0
    if plain_saliency and not data.native and not changes_images:  # nothing changes an image: cache
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

    unet = precision.module(build_unet(model_cfg).to(dev))
    head = precision.module(AnomalyHead(model_cfg.head_width).to(dev)) if model_cfg.head else None
    net = torch.nn.ModuleDict({"unet": unet, **({"head": head} if head is not None else {})})
    compiled = compile_module(unet) if train_cfg.compile else unet
    mods = StepModules(
        forward=lambda x: precision.run(compiled, x),
        saliency=saliency,
        head=None if head is None else (lambda x: precision.run(head, x)),
    )
    opt = torch.optim.Adam(net.parameters(), lr=train_cfg.lr)
    per_epoch = steps_per_epoch(len(train_idx), train_cfg.batch_size)
    if per_epoch == 0:
        raise ConfigError(f"{len(train_idx)} training image(s) after the hold-out: need at least 2")
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
        net.load_state_dict(ck["unet"])
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
            "heldout_loss": heldout_loss(model_cfg, train_cfg, mods, list(net.values()), held_out, held_att),
            "lr": opt.param_groups[0]["lr"],
        }
        net.eval()
        pipe = Pipeline(model_cfg, unet, 1.0, dev, saliency, precision=precision, head=head)
        rec.update(recovery_check(pipe, held_out).curve_fields())
        if on_curve is not None:
            rec.update(on_curve(rec, pipe) or {})
        net.train()
        curve.append(rec)
        with open(curve_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        write_curve_png(curve, out_dir / "curve.png")
        return rec

    def keep_if_best(rec: dict) -> None:
        """Keep a copy of the weights when the held-out loss improves; count evaluations since it last did."""
        nonlocal best, since_best
        if best is None or rec["heldout_loss"] < best["loss"]:
            state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            best, since_best = {"loss": rec["heldout_loss"], "step": step, "state": state}, 0
        else:
            since_best += 1

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "step": step,
                "unet": net.state_dict(),
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
    # under a time budget the bar counts minutes, not the epoch bound's steps (an ETA of hours is a lie)
    timed = deadline is not None and max_steps is None
    bar = tqdm(
        total=round(max_minutes, 1) if timed else total,  # type: ignore[arg-type]
        initial=round(elapsed() / 60, 1) if timed else step,
        desc=f"training {category}",
        unit="min" if timed else "step",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min {postfix}" if timed else None,
        disable=not progress,
    )
    net.train()
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
        loss = step_loss(model_cfg, train_cfg, mods, x, att, gen).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses = [*losses[-19:], loss.item()]
        step += 1
        bar.update(round(elapsed() / 60, 1) - bar.n if timed else 1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", step=step)
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
        net.load_state_dict(best["state"])
    net.eval()

    pipe = Pipeline(model_cfg, unet, 1.0, dev, saliency, precision=precision, head=head)
    extras: dict[str, torch.Tensor] = {}
    if model_cfg.scoring.normal_map:  # from training images only: the held-out ones calibrate the threshold
        pipe.normal_map = fit_normal_map(pipe, data.images[train_idx[:NORMAL_MAP_IMAGES]])
        extras[NORMAL_MAP_KEY] = pipe.normal_map
    held_images = select(data.images, hold_idx)
    threshold, stats = calibrate(pipe, held_images, train_cfg.threshold_policy)
    recovery = recovery_check(pipe, held_out)

    dino_path = resolve_dino_weights(dino_weights) if needs_dino(model_cfg) else None
    manifest = Manifest(
        config=model_cfg,
        threshold=threshold,
        calibration=stats,
        training={
            **{k: v for k, v in asdict(train_cfg).items()},
            "category": category,
            "n_train": len(train_idx),
            "n_holdout": len(hold_idx),
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
            "precision": precision.to_json(),
            "mosaic_estimate": estimated,
            "recovery": recovery.to_json(),
            "degenerate": recovery.degenerate,
        },
        dino_weights_sha256=sha256_file(dino_path) if dino_path else None,
        threshold_policy=train_cfg.threshold_policy,
    )
    if isinstance(saliency, WeightFreeSaliency):
        extras.update({f"saliency.{k}": v for k, v in saliency.state_dict().items()})
    if head is not None:
        extras.update({f"{HEAD_PREFIX}{k}": v for k, v in head.state_dict().items()})
    return save_artifact(out_dir, unet.cpu(), manifest, extras)


def _read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
