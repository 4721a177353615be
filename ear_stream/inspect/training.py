"""Training one product model on normal images only (docs/design.md, "Training"): the run.

:class:`Trainer` owns the run from data to artifact: setup (data, saliency, mosaic scale,
networks, resume), the loop with its limits, evaluations and checkpoints, and the artifact
(best weights, normal map, calibration, recovery check, one :class:`ProductModel` saved).
Part of the normal images is held out to calibrate the decision threshold with the image
threshold policy (``TrainConfig.threshold_policy``, default ``fpr:0.02``: at most 1 of the
usual 50 held-out good images above it; :mod:`.thresholds` lists the policies), stored with the
calibration statistics in the manifest.

Around it, each with its own job: :mod:`.trainset` (the images as the model sees them, the
attention cache, the mosaic-scale estimate), :mod:`.steps` (what one step computes: simulated
defects, the losses of U-Net and head), :mod:`.resume` (learning curve, resumable checkpoints) and
:mod:`.limits` (what stops a run, its progress bar).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..io.datasets import train_images
from ..model.artifact import Manifest, build_unet, save_artifact
from ..model.config import ModelConfig, TrainConfig, max_mosaic_scale, min_mosaic_scale
from ..model.container import ProductModel
from ..model.factory import build_saliency, dino_weights_hash
from ..model.head import AnomalyHead
from ..model.mosaic_scale import MosaicEstimator
from ..model.precision import compile_module, resolve_precision
from .augment import augment, augmentations, batches_of, epoch_order, step_generator, steps_per_epoch
from .calibration import calibrate, split_holdout
from .checkpoint import CHECKPOINT_NAME
from .inputs import load_images, resolve_device, select
from .limits import RunLimits
from .maps import fit_normal_map
from .pipeline import Pipeline
from .recovery import recovery_check
from .resume import LearningCurve, restore_checkpoint, write_checkpoint
from .steps import StepInputs, StepModules, corrupt, heldout_loss, make_scheduler, step_loss
from .threshold_policies import parse_policy
from .trainset import TrainingSet, compute_attention, estimate_mosaic_scale
from .variant import Variant

__all__ = [
    "NORMAL_MAP_IMAGES",
    "RunLimits",
    "StepInputs",
    "StepModules",
    "Trainer",
    "TrainingSet",
    "compute_attention",
    "corrupt",
    "estimate_mosaic_scale",
    "heldout_loss",
    "make_scheduler",
    "step_loss",
    "train_model",
]

#: training images whose mean MSGMS map is the normal map (enough for a stable per-pixel mean)
NORMAL_MAP_IMAGES = 256


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
        # a policy that cannot be applied after training (f1 needs labelled defects) fails now, not at the end
        parse_policy(self.train_cfg.threshold_policy, labelled=False)
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
        """The variant's module (its spec says what it needs), its parameters recorded, fitted when it fits;
        the attention cached when nothing changes an image between epochs."""
        cfg, variant = self.model_cfg, Variant.of(self.model_cfg)
        saliency = (
            build_saliency(cfg.saliency, cfg.saliency_params, self.dino_weights) if variant.uses_attention else None
        )
        self.saliency = None if saliency is None else saliency.to(self.dev)
        if self.saliency is not None and variant.spec.weight_free:
            self.model_cfg.saliency_params = self.saliency.params()
        if self.saliency is not None and variant.spec.fitted:
            self.saliency.fit(self.fixed_train.to(self.dev))
        #: the saliency whose attention depends on the image alone (not two-pass): computed once per image
        self.plain_saliency = self.saliency if variant.single_pass else None
        changes_images = bool(augmentations(self.train_cfg)) or self.train_cfg.simulate > 0
        plain = self.plain_saliency
        if plain is not None and not self.data.native and not changes_images:  # nothing changes an image: cache
            self.data.attention = compute_attention(plain, self.data.images, self.dev)  # type: ignore[arg-type]

    def _setup_mosaic_scale(self) -> None:
        """m given, or estimated from the training images between the floor and S/4."""
        self.estimated: dict = {}
        cfg = self.model_cfg
        if self.mosaic_scale is None:
            floor = min_mosaic_scale(cfg.image_size, cfg.saliency)
            att, plain, cached = None, self.plain_saliency, self.data.attention
            if plain is not None:
                att = (
                    cached[self.train_idx]
                    if cached is not None
                    else compute_attention(plain, self.fixed_train, self.dev)
                )
            est = MosaicEstimator()
            m, r10_value = estimate_mosaic_scale(self.fixed_train.cpu(), att, est, floor)
            self.estimated = {"r10": r10_value, "estimator": asdict(est), "floor": floor}
            self.mosaic_scale = m
        cfg.mosaic_scale = int(self.mosaic_scale)

    def _setup_networks(self) -> None:
        cfg, tcfg, precision = self.model_cfg, self.train_cfg, self.precision
        self.unet = precision.module(build_unet(cfg).to(self.dev))
        self.head = precision.module(AnomalyHead(cfg.head_width).to(self.dev)) if cfg.head else None
        #: what the artifact saves; ``net``: what is trained (the optimizer's, the checkpoint's, early stopping's)
        self.model = ProductModel(self.unet, self.saliency, self.head)
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
        plain = self.plain_saliency
        self.held_att = None if plain is None else compute_attention(plain, self.held_out, self.dev).to(self.dev)

    def _setup_state(self) -> None:
        """A fresh run, or the state of ``checkpoint.pt`` (``--resume``); the learning curve to append to."""
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME
        if self.resume:
            restore_checkpoint(self)
            self.curve = LearningCurve.resume(self.out_dir, self.step_count)
        else:
            self.ckpt_path.unlink(missing_ok=True)
            self.curve = LearningCurve.start(self.out_dir)

    # ------------------------------------------------------------------ the loop
    def elapsed(self) -> float:
        return self.elapsed_before + self.limits.now() - self.started

    def pipeline(self) -> Pipeline:
        """The networks as an inference pipeline (threshold 1 until calibrated)."""
        return Pipeline.from_model(self.model_cfg, self.model, 1.0, self.dev, precision=self.precision)

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
        loss = self.batch_loss(x, att, gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.losses = [*self.losses[-19:], loss.item()]
        self.step_count += 1
        return self.losses[-1]

    def batch_loss(self, x: torch.Tensor, att: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """The loss of one training batch (a refinement adds its labelled items here)."""
        return step_loss(self.model_cfg, self.train_cfg, self.mods, x, att, gen).float()

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
        return rec

    def keep_if_best(self, rec: dict) -> None:
        """Keep a copy of the weights when the held-out loss improves; count evaluations since it last did."""
        if self.best is None or rec["heldout_loss"] < self.best["loss"]:
            state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            self.best, self.since_best = {"loss": rec["heldout_loss"], "step": self.step_count, "state": state}, 0
        else:
            self.since_best += 1

    def checkpoint(self) -> None:
        write_checkpoint(self)

    def _after_step(self, bar, next_curve: float | None, next_ckpt: float | None) -> tuple[float | None, float | None]:
        tcfg, lim = self.train_cfg, self.limits
        lim.advance(bar, self.elapsed())
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
        bar = lim.progress_bar(self.total, self.step_count, self.elapsed(), f"training {self.category}")
        self.net.train()
        while self.stop_reason is None:
            self.stop_reason = lim.reached(self.step_count, self.total, self.elapsed())
            if self.stop_reason is not None:
                break
            self.step()
            next_curve, next_ckpt = self._after_step(bar, next_curve, next_ckpt)
        bar.close()
        records = self.curve.records
        if (lim.curve_every_minutes or tcfg.eval_every) and (not records or records[-1]["step"] != self.step_count):
            rec = self.evaluate()
            if tcfg.eval_every:  # the last weights compete with the best ones too
                self.keep_if_best(rec)
        return self.finalize()

    # ------------------------------------------------------------------ the artifact
    def finalize(self) -> Path:
        """Best weights, normal map, calibration, recovery check; writes the artifact (the pipeline's container:
        U-Net, saliency, head and normal map in one weights file)."""
        if self.best is not None:  # early stopping keeps the best held-out weights, not the last ones
            self.net.load_state_dict(self.best["state"])
        self.net.eval()
        pipe = self.pipeline()
        if self.model_cfg.scoring.normal_map:  # from training images only: the held-out ones calibrate
            pipe.normal_map = fit_normal_map(pipe, self.data.images[self.train_idx[:NORMAL_MAP_IMAGES]])
        threshold, stats = calibrate(pipe, select(self.data.images, self.hold_idx), self.train_cfg.threshold_policy)
        recovery = recovery_check(pipe, self.held_out)
        manifest = Manifest(
            config=self.model_cfg,
            threshold=threshold,
            calibration=stats,
            training=self._training_record(recovery),
            dino_weights_sha256=dino_weights_hash(self.model_cfg.saliency, self.dino_weights),
            threshold_policy=self.train_cfg.threshold_policy,
        )
        return save_artifact(self.out_dir, pipe.model, manifest)

    def _training_record(self, recovery) -> dict:
        best, lim = self.best, self.limits
        return {
            **asdict(self.train_cfg),
            "category": self.category,
            "data_root": str(Path(self.data_root).absolute()),
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
            "final_heldout_loss": self.curve.records[-1]["heldout_loss"] if self.curve.records else None,
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
