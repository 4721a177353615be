"""Training one product model on normal images only (docs/design.md, "Training").

Attention maps are deterministic, so they are computed once per training image
and cached for every epoch. Part of the normal images is held out to calibrate
the decision threshold: ``threshold = mean + k·std`` of their scores (k = 3 by
default), never below their maximum — stored with the statistics in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

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
from .pipeline import NORMAL_MAP_KEY, Images, Pipeline, fit_normal_map, load_images, resolve_device, select
from .recovery import recovery_check
from .simulate import simulate_defects
from .variant import Variant, paste_context, two_pass_attention
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
    mask = None if attention is None else saliency_mask(attention, (int(images.shape[-2]), int(images.shape[-1])))
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

    def fixed(self, idx) -> torch.Tensor:
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
    unet,
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
    variant = Variant.of(cfg)
    if isinstance(saliency, SelfSaliency):
        with torch.no_grad():
            att, light, _ = two_pass_attention(saliency, unet, x, cfg.scoring)
        strong, _ = variant.excise(x, att)
        mask = variant.context_mask(x, att)
        if mask is not None:  # the light first pass mosaics everything: nothing to keep there (S = 1)
            mask = torch.cat([torch.ones_like(mask), mask])
        return StepInputs(torch.cat([light, strong]), torch.cat([clean, clean]), torch.cat([x, x]), mask)
    composite, _ = variant.excise(x, att)
    return StepInputs(composite, clean, x, variant.context_mask(x, att))


@dataclass
class StepModules:
    """What a training step runs: the U-Net forward (precision applied), the saliency, the optional head."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # composite → reconstruction in fp32
    saliency: torch.nn.Module | None
    head: Callable[[torch.Tensor], torch.Tensor] | None = None  # head inputs → logits in fp32


def step_loss(
    cfg: ModelConfig, tcfg: TrainConfig, mods: StepModules, x: torch.Tensor, att, gen: torch.Generator
) -> torch.Tensor:
    """One step's loss; attention not given (not cached) is computed here, on the image the model is shown.

    With ``tcfg.simulate`` a share of the batch gets a simulated defect first: the
    U-Net must return the clean image (its error inside the defect weighs
    ``1 + defect_weight``), and the head, when the model has one, must segment it.
    """
    saliency = mods.saliency
    if Variant.of(cfg).is_riad:
        return combined_loss(
            x, riad.training_reconstruction(mods.forward, x, gen), tcfg.loss_weights, cfg.scoring.n_scales
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
    loss = combined_loss(inputs.target, recon, tcfg.loss_weights, cfg.scoring.n_scales)
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
def heldout_loss(cfg, tcfg, mods: StepModules, modules, images, attention, batch: int = 16) -> float:
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


@dataclass
class RunLimits:
    """What bounds a run beyond its epochs, and what it reports on the way (``train_model``'s knobs)."""

    max_steps: int | None = None
    max_minutes: float | None = None
    curve_every_minutes: float | None = None
    on_curve: Callable[[dict, Pipeline], dict | None] | None = None
    progress: bool = True
    #: "wall" (what an operator waits for) or "cpu" (this process's CPU seconds): a study that shares its cores
    #: with other work budgets CPU time, so every variant gets the same compute however busy the machine was.
    clock: Literal["wall", "cpu"] = "wall"

    def now(self) -> float:
        return time.process_time() if self.clock == "cpu" else time.time()


class Trainer:
    """One training run: :meth:`setup` (data, saliency, mosaic scale, networks, resume) → :meth:`step` until a
    limit → :meth:`evaluate` (learning curve, best weights) and :meth:`checkpoint` on the way → :meth:`finalize`
    (calibration, recovery check, artifact). The caller's configs are never mutated: the trainer works on copies
    (``dataclasses.replace``) and the artifact records the resolved ones.
    """

    def __init__(
        self,
        data_root: str | Path,
        category: str,
        out_dir: str | Path,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        mosaic_scale: int | None = None,
        dino_weights: str | os.PathLike | None = None,
        device: str = "auto",
        limits: RunLimits | None = None,
        resume: bool = False,
    ) -> None:
        self.data_root, self.category, self.out_dir = data_root, category, Path(out_dir)
        # head auto (None) decided here, from the simulated defects the run trains on
        head = model_cfg.resolved_head(train_cfg.simulate)
        if head and train_cfg.simulate <= 0:
            raise ConfigError("the learned head learns from simulated defects: train with simulate > 0, or no head")
        self.model_cfg, self.train_cfg = dataclasses.replace(model_cfg, head=head), train_cfg
        self.mosaic_scale, self.dino_weights, self.resume = mosaic_scale, dino_weights, resume
        self.limits = limits or RunLimits()
        self.dev = resolve_device(device)
        self.precision = resolve_precision(train_cfg.precision, self.dev)
        if mosaic_scale is not None and mosaic_scale > max_mosaic_scale(model_cfg.image_size):
            raise ConfigError(
                f"mosaic scale {mosaic_scale} leaves fewer than 4×4 cells at {model_cfg.image_size} px: "
                f"use at most {max_mosaic_scale(model_cfg.image_size)} (or auto)"
            )
        self.step_count, self.elapsed_before = 0, 0.0
        self.losses: list[float] = []
        self.best: dict | None = None  # {"loss", "step", "state"}: the weights early stopping keeps
        self.since_best = 0
        self.stop_reason: str | None = None
        self._order_epoch = -1
        self._order: list[torch.Tensor] = []  # the current epoch's batches (a function of seed and epoch)
        self.started = self.limits.now()

    # ------------------------------------------------------------------ setup
    def setup(self) -> Trainer:
        torch.manual_seed(self.train_cfg.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._setup_data()
        self._setup_saliency()
        self._setup_mosaic_scale()
        self._setup_networks()
        self._setup_state()
        return self

    def _setup_data(self) -> None:
        cfg, tcfg = self.model_cfg, self.train_cfg
        files = train_images(self.data_root, self.category)
        self.train_idx, self.hold_idx = split_holdout(len(files), tcfg.holdout_fraction, tcfg.seed)
        images = load_images(cfg, files, desc="loading train images", progress=self.limits.progress)
        self.data = TrainingSet(images, cfg.image_size)
        if self.dev.type == "cuda":  # images stay on the device: no host→device copy per step
            d = self.data
            d.images = [i.to(self.dev) for i in d.images] if d.native else d.images.to(self.dev)  # type: ignore[union-attr]
        self.fixed_train = self.data.fixed(self.train_idx)

    def _setup_saliency(self) -> None:
        cfg = self.model_cfg
        self.saliency = Variant.of(cfg).build_saliency(cfg.saliency_params, self.dino_weights, self.dev)
        if isinstance(self.saliency, WeightFreeSaliency):
            self.model_cfg.saliency_params = self.saliency.params()
            if self.saliency.fitted:
                self.saliency.fit(self.fixed_train.to(self.dev))
        self.plain_saliency = self.saliency is not None and not isinstance(self.saliency, SelfSaliency)
        changes_images = bool(augmentations(self.train_cfg)) or self.train_cfg.simulate > 0
        if self.plain_saliency and not self.data.native and not changes_images:  # nothing changes an image: cache
            self.data.attention = compute_attention(self.saliency, self.data.images, self.dev)  # type: ignore[arg-type]

    def _setup_mosaic_scale(self) -> None:
        """m given, or estimated from the training images between the floor and S/4."""
        self.estimated: dict = {}
        cfg = self.model_cfg
        if self.mosaic_scale is None:
            floor = min_mosaic_scale(cfg.image_size, cfg.saliency)
            att = None
            if self.plain_saliency:
                cached = self.data.attention
                att = cached[self.train_idx] if cached is not None else compute_attention(
                    self.saliency, self.fixed_train, self.dev
                )  # fmt: skip
            est = MosaicEstimator()
            m, r10_value = estimate_mosaic_scale(self.fixed_train.cpu(), att, est, floor)
            self.estimated = {"r10": r10_value, "estimator": asdict(est), "floor": floor}
            self.mosaic_scale = m
        cfg.mosaic_scale = int(self.mosaic_scale)

    def _setup_networks(self) -> None:
        cfg, tcfg, precision = self.model_cfg, self.train_cfg, self.precision
        self.unet = precision.module(build_unet(cfg).to(self.dev))
        self.head = precision.module(AnomalyHead(cfg.head_width).to(self.dev)) if cfg.head else None
        self.net = torch.nn.ModuleDict({"unet": self.unet, **({"head": self.head} if self.head is not None else {})})
        compiled = compile_module(self.unet) if tcfg.compile else self.unet
        head = self.head
        self.mods = StepModules(
            forward=lambda x: precision.run(compiled, x),
            saliency=self.saliency,
            head=None if head is None else (lambda x: precision.run(head, x)),
        )
        self.opt = torch.optim.Adam(self.net.parameters(), lr=tcfg.lr)
        self.per_epoch = steps_per_epoch(len(self.train_idx), tcfg.batch_size)
        if self.per_epoch == 0:
            raise ConfigError(f"{len(self.train_idx)} training image(s) after the hold-out: need at least 2")
        self.sched = make_scheduler(self.opt, tcfg, self.per_epoch)
        bound = tcfg.epochs * self.per_epoch
        self.total = bound if self.limits.max_steps is None else min(self.limits.max_steps, bound)
        self.held_out = self.data.fixed(self.hold_idx).to(self.dev)
        sal = self.saliency
        self.held_att = compute_attention(sal, self.held_out, self.dev).to(self.dev) if self.plain_saliency else None

    def _setup_state(self) -> None:
        """A fresh run, or the state of ``checkpoint.pt`` (``--resume``); the learning curve to append to."""
        self.curve_path, self.ckpt_path = self.out_dir / "curve.jsonl", self.out_dir / CHECKPOINT_NAME
        if not self.resume:
            self.curve_path.unlink(missing_ok=True)
            self.ckpt_path.unlink(missing_ok=True)
        else:
            ck = load_checkpoint(self.ckpt_path)
            if ck["model_config"] != _comparable(self.model_cfg) or ck["train_config"] != _comparable(self.train_cfg):
                raise CheckpointError(
                    f"{self.ckpt_path} was written for another configuration: resume with the same options as the "
                    "killed run"
                )
            self.net.load_state_dict(ck["unet"])
            self.opt.load_state_dict(ck["optimizer"])
            if self.sched is not None:
                self.sched.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["torch_rng"])
            self.step_count, self.losses, self.elapsed_before = (
                int(ck["step"]),
                list(ck["losses"]),
                float(ck["elapsed"]),
            )
            self.best, self.since_best = ck["best"], int(ck["since_best"])
            kept = [r for r in _read_curve(self.curve_path) if r["step"] <= self.step_count]  # the rest is redone
            self.curve_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.curve = _read_curve(self.curve_path)

    # ------------------------------------------------------------------ the loop
    def elapsed(self) -> float:
        return self.elapsed_before + self.limits.now() - self.started

    def pipeline(self) -> Pipeline:
        """The networks as an inference pipeline (threshold 1 until calibrated)."""
        return Pipeline(
            self.model_cfg, self.unet, 1.0, self.dev, self.saliency, precision=self.precision, head=self.head
        )

    def step(self) -> float:
        """One optimisation step; every random draw comes from the (seed, step) generator (resumable)."""
        tcfg, step = self.train_cfg, self.step_count
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._order_epoch:
            self._order_epoch = epoch
            self._order = batches_of(epoch_order(len(self.train_idx), tcfg.seed, epoch), tcfg.batch_size)
        gen = step_generator(tcfg.seed, step)
        x, att = self.data.batch(torch.from_numpy(self.train_idx)[self._order[position]], gen)
        x = augment(x, tcfg, gen).to(self.dev, non_blocking=True)
        att = None if att is None else att.to(self.dev)
        loss = step_loss(self.model_cfg, tcfg, self.mods, x, att, gen).float()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.losses = [*self.losses[-19:], loss.item()]
        self.step_count += 1
        return self.losses[-1]

    def evaluate(self) -> dict:
        """A learning-curve record: held-out loss, recovery check, the caller's fields (``on_curve``)."""
        net = self.net
        rec = {
            "step": self.step_count,
            "minutes": round(self.elapsed() / 60.0, 3),
            "train_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
            "heldout_loss": heldout_loss(
                self.model_cfg, self.train_cfg, self.mods, list(net.values()), self.held_out, self.held_att
            ),
            "lr": self.opt.param_groups[0]["lr"],
        }
        net.eval()
        pipe = self.pipeline()
        rec.update(recovery_check(pipe, self.held_out).curve_fields())
        if self.limits.on_curve is not None:
            rec.update(self.limits.on_curve(rec, pipe) or {})
        net.train()
        self.curve.append(rec)
        with open(self.curve_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        write_curve_png(self.curve, self.out_dir / "curve.png")
        return rec

    def keep_if_best(self, rec: dict) -> None:
        """Keep a copy of the weights when the held-out loss improves; count evaluations since it last did."""
        if self.best is None or rec["heldout_loss"] < self.best["loss"]:
            state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            self.best, self.since_best = {"loss": rec["heldout_loss"], "step": self.step_count, "state": state}, 0
        else:
            self.since_best += 1

    def checkpoint(self) -> None:
        save_checkpoint(
            self.ckpt_path,
            {
                "step": self.step_count,
                "unet": self.net.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": None if self.sched is None else self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "losses": self.losses[-20:],
                "elapsed": self.elapsed(),
                "best": self.best,
                "since_best": self.since_best,
                "model_config": _comparable(self.model_cfg),
                "train_config": _comparable(self.train_cfg),
            },
        )

    def _limit_reached(self) -> str | None:
        lim = self.limits
        if self.step_count >= self.total:
            return "max_steps" if lim.max_steps is not None and self.step_count >= lim.max_steps else "epochs"
        if lim.max_minutes is not None and self.elapsed() >= 60.0 * lim.max_minutes:
            return "max_minutes"
        return None

    def _progress_bar(self):
        """Under a time budget the bar counts minutes, not the epoch bound's steps (an ETA of hours is a lie)."""
        lim = self.limits
        self._timed = lim.max_minutes is not None and lim.max_steps is None
        return tqdm(
            total=round(lim.max_minutes, 1) if self._timed else self.total,
            initial=round(self.elapsed() / 60, 1) if self._timed else self.step_count,
            desc=f"training {self.category}",
            unit="min" if self._timed else "step",
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min {postfix}" if self._timed else None,
            disable=not lim.progress,
        )

    def _after_step(self, bar, next_curve: float | None, next_ckpt: float | None) -> tuple[float | None, float | None]:
        tcfg, lim = self.train_cfg, self.limits
        bar.update(round(self.elapsed() / 60, 1) - bar.n if self._timed else 1)
        bar.set_postfix(loss=f"{self.losses[-1]:.4f}", step=self.step_count)
        if tcfg.eval_every and self.step_count % tcfg.eval_every == 0:
            self.keep_if_best(self.evaluate())
            if tcfg.patience and self.since_best >= tcfg.patience:
                self.stop_reason = "patience"
        elif next_curve is not None and self.elapsed() >= next_curve:
            self.evaluate()
            next_curve = self.elapsed() + 60.0 * lim.curve_every_minutes  # type: ignore[operator]
        if (tcfg.checkpoint_every and self.step_count % tcfg.checkpoint_every == 0) or (
            next_ckpt is not None and self.elapsed() >= next_ckpt
        ):
            self.checkpoint()
            if next_ckpt is not None:
                next_ckpt = self.elapsed() + 60.0 * tcfg.checkpoint_minutes  # type: ignore[operator]
        return next_curve, next_ckpt

    def run(self) -> Path:
        """Step until a limit, then finalize; returns the model directory."""
        lim, tcfg = self.limits, self.train_cfg
        next_curve = self.elapsed() + 60.0 * lim.curve_every_minutes if lim.curve_every_minutes else None
        next_ckpt = self.elapsed() + 60.0 * tcfg.checkpoint_minutes if tcfg.checkpoint_minutes else None
        bar = self._progress_bar()
        self.net.train()
        while self.stop_reason is None:
            self.stop_reason = self._limit_reached()
            if self.stop_reason is not None:
                break
            self.step()
            next_curve, next_ckpt = self._after_step(bar, next_curve, next_ckpt)
        bar.close()
        if (lim.curve_every_minutes or tcfg.eval_every) and (
            not self.curve or self.curve[-1]["step"] != self.step_count
        ):
            rec = self.evaluate()
            if tcfg.eval_every:  # the last weights compete with the best ones too
                self.keep_if_best(rec)
        return self.finalize()

    # ------------------------------------------------------------------ the artifact
    def finalize(self) -> Path:
        """Best weights, normal map, calibration, recovery check; writes the artifact."""
        if self.best is not None:  # early stopping keeps the best held-out weights, not the last ones
            self.net.load_state_dict(self.best["state"])
        self.net.eval()
        pipe = self.pipeline()
        extras: dict[str, torch.Tensor] = {}
        if self.model_cfg.scoring.normal_map:  # from training images only: the held-out ones calibrate
            pipe.normal_map = fit_normal_map(pipe, self.data.images[self.train_idx[:NORMAL_MAP_IMAGES]])
            extras[NORMAL_MAP_KEY] = pipe.normal_map
        threshold, stats = calibrate(pipe, select(self.data.images, self.hold_idx), self.train_cfg.threshold_policy)
        recovery = recovery_check(pipe, self.held_out)
        dino_path = resolve_dino_weights(self.dino_weights) if Variant.of(self.model_cfg).needs_dino else None
        manifest = Manifest(
            config=self.model_cfg,
            threshold=threshold,
            calibration=stats,
            training=self._training_record(recovery),
            dino_weights_sha256=sha256_file(dino_path) if dino_path else None,
            threshold_policy=self.train_cfg.threshold_policy,
        )
        if isinstance(self.saliency, WeightFreeSaliency):
            extras.update({f"saliency.{k}": v for k, v in self.saliency.state_dict().items()})
        if self.head is not None:
            extras.update({f"{HEAD_PREFIX}{k}": v for k, v in self.head.state_dict().items()})
        return save_artifact(self.out_dir, self.unet.cpu(), manifest, extras)  # type: ignore[arg-type]

    def _training_record(self, recovery) -> dict:
        best, lim = self.best, self.limits
        return {
            **asdict(self.train_cfg),
            "category": self.category,
            "n_train": len(self.train_idx),
            "n_holdout": len(self.hold_idx),
            "steps": self.step_count,
            "stop_reason": self.stop_reason,
            "max_minutes": lim.max_minutes,
            "clock": lim.clock,
            "max_steps": lim.max_steps,
            "augmentations": augmentations(self.train_cfg),
            "best_step": None if best is None else best["step"],
            "best_heldout_loss": None if best is None else best["loss"],
            "resumed": bool(self.resume),
            "final_loss": self.losses[-1] if self.losses else None,
            "final_heldout_loss": self.curve[-1]["heldout_loss"] if self.curve else None,
            "seconds": round(self.elapsed(), 1),
            "device": str(self.dev),
            "threads": torch.get_num_threads(),
            "precision": self.precision.to_json(),
            "mosaic_estimate": self.estimated,
            "recovery": recovery.to_json(),
            "degenerate": recovery.degenerate,
        }


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
    """Train, calibrate and save one model directory; returns its path (a :class:`Trainer` run).

    ``mosaic_scale=None`` estimates m from the training images (``--mosaic-scale auto``),
    between :func:`min_mosaic_scale` and S/4. Training stops at the first of
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
    limits = RunLimits(max_steps, max_minutes, curve_every_minutes, on_curve, progress)
    trainer = Trainer(data_root, category, out_dir, model_cfg, train_cfg, mosaic_scale, dino_weights, device, limits,
                      resume)  # fmt: skip
    return trainer.setup().run()


def _read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
