"""Refining a product model on the line's labels (docs/design.md, "Learning from the line"): ``ear-stream refine``.

A :class:`Refiner` is a :class:`~.training.Trainer` that starts from the promoted model (its config, saliency,
mosaic scale and weights) instead of from scratch, and keeps training it as it was trained — good images with
simulated defects — with three additions (:class:`~ear_stream.model.config.RefineConfig`):

- a **defect bank** (:mod:`.defect_bank`): part of the simulated defects are confirmed defects pasted onto good
  images (their brushed mask, or the parent head's map of them, as the region), recovered and segmented as a
  simulated one is — measured to help only when U-Net and head learn together, never the head alone;
- **confirmed goods** (false alarms are hard negatives): recovered as themselves, segmented as clean;
- **confirmed defects**: a multiple-instance loss on the head's score map (the mean of its top share must be
  high, as the image score is its max), and their mask, when brushed, as a pixel target.

A model without a head (scored by the MSGMS map) learns through the bank and the confirmed goods only; one
trained without simulated defects gets the bank alone, in the default share of its batch items.

The run shares the trainer's limits (CPU-minute budget, progress bar), checkpoints and ``--resume``, and
precision paths. Its artifact is a **candidate**: threshold chosen on labelled items (the training side), the
parent and the candidate scored on the held-out labels (:mod:`.promotion`), the lineage in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..io.results import write_file_atomic
from ..model.artifact import Manifest, save_artifact
from ..model.config import DEFAULT_IMAGE_POLICY, DEFAULT_PRECISION, ModelConfig, RefineConfig, TrainConfig
from ..model.factory import dino_weights_hash, load_model
from ..model.head import focal_dice_loss, head_inputs, smoothed_map
from ..model.reference import combined_loss
from .calibration import calibrate
from .defect_bank import DefectBank, map_region
from .inputs import select
from .labelled import LabelledSet
from .limits import RunLimits
from .maps import fit_normal_map
from .pipeline import Pipeline
from .promotion import HeldOutFigures, refusal
from .recovery import recovery_check
from .steps import corrupt, step_loss
from .threshold_policies import image_threshold, parse_policy
from .training import NORMAL_MAP_IMAGES, Trainer
from .variant import Variant, paste_context

#: what a refinement records beside its checkpoint, so that ``--resume`` continues the same refinement only
REFINE_STATE = "refine-state.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parent_train_config(manifest: Manifest, refine: RefineConfig, precision: str | None) -> TrainConfig:
    """The parent's training settings (as recorded), with the refinement's rate and precision. The seed stays
    the parent's: the same good images are held out to calibrate, never trained on."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # the record's "precision" is the resolved path (its description), not the choice: the refinement's own
    recorded = {k: v for k, v in manifest.training.items() if k in fields and k != "precision"}
    if "loss_weights" in recorded:
        recorded["loss_weights"] = tuple(recorded["loss_weights"])
    base = TrainConfig(**recorded)
    return dataclasses.replace(
        base,
        lr=refine.lr,
        precision=precision or DEFAULT_PRECISION,
        schedule="fixed",
        eval_every=None,
        patience=None,
        checkpoint_every=None,
    )


def mil_loss(logits: torch.Tensor, defect: torch.Tensor, cfg: ModelConfig, top: float) -> torch.Tensor:
    """Multiple-instance loss of image labels on the head: the mean of the top ``top`` share of its score map
    (smoothed and inside the border band, as the image score is taken) against the label."""
    sc = cfg.scoring
    values = smoothed_map(logits, sc.box_px, sc.head_map)
    b = sc.border_px
    if b and values.shape[-1] > 2 * b and values.shape[-2] > 2 * b:
        values = values[..., b:-b, b:-b]
    flat = values.flatten(1)
    k = max(1, int(top * flat.shape[1]))
    pooled = flat.topk(k, dim=1).values.mean(1)
    target = defect.float()
    if sc.head_map == "logit":
        return F.binary_cross_entropy_with_logits(pooled, target)
    return F.binary_cross_entropy(pooled.clamp(1e-6, 1 - 1e-6), target)


class Refiner(Trainer):
    """One refinement: the parent's model trained on with its labelled items (see the module docstring)."""

    def __init__(
        self,
        parent_dir: str | Path,
        labelled: LabelledSet,
        data_root: str | Path,
        category: str,
        out_dir: str | Path,
        refine: RefineConfig,
        precision: str | None = None,
        dino_weights: str | None = None,
        device: str = "auto",
        limits: RunLimits | None = None,
        resume: bool = False,
    ) -> None:
        self.parent_dir = Path(parent_dir).resolve()
        self.parent, self.parent_manifest = load_model(self.parent_dir, dino_weights)
        cfg = self.parent_manifest.config
        if cfg.native:
            raise ConfigError(f"{parent_dir} inspects native-resolution crops: refine works on whole-image models")
        if Variant.of(cfg).is_riad:
            raise ConfigError(f"{parent_dir} is a RIAD model: refine works on EAR models")
        self.refine_cfg, self.labelled = refine, labelled
        train_cfg = parent_train_config(self.parent_manifest, refine, precision)
        if train_cfg.simulate == 0 and labelled.defect[labelled.train_idx].any():
            # a plain parent (no simulated defects): the bank alone, in as many items as the recipe's default
            train_cfg = dataclasses.replace(train_cfg, simulate=TrainConfig.simulate)
            self.bank_only = True
        else:
            self.bank_only = False
        super().__init__(data_root, category, out_dir, dataclasses.replace(cfg), train_cfg,
                         mosaic_scale=cfg.mosaic_scale, dino_weights=dino_weights, device=device, limits=limits,
                         resume=resume)  # fmt: skip
        self.bank: DefectBank | None = None

    # ------------------------------------------------------------------ setup
    def _setup_saliency(self) -> None:
        """The parent's saliency as it is (a fitted variant keeps the statistics the parent was fitted with)."""
        variant = Variant.of(self.model_cfg)
        self.saliency = None if self.parent.saliency is None else self.parent.saliency.to(self.dev).eval()
        self.plain_saliency = self.saliency if variant.single_pass else None

    def _setup_networks(self) -> None:
        super()._setup_networks()
        self.unet.load_state_dict(self.parent.unet.state_dict())
        if self.head is not None and self.parent.anomaly_head is not None:
            self.head.load_state_dict(self.parent.anomaly_head.state_dict())
        lab = self.labelled
        train = lab.train_idx
        self.label_defects = train[lab.defect[train]]
        self.label_goods = train[~lab.defect[train]]
        if len(train) == 0:
            raise ConfigError("every label is held out: label more items (the held-out share judges the candidate)")
        self._setup_bank()

    def _setup_bank(self) -> None:
        """The defect bank of the training side's confirmed defects: their mask, else the parent head's map."""
        lab, idx = self.labelled, self.label_defects
        if len(idx) == 0:
            self.bank = None
            return
        regions = lab.masks[idx].clone()
        unmasked = [i for i, j in enumerate(idx) if not lab.has_mask[j]]
        if unmasked:
            parent = Pipeline.from_artifact(self.parent_dir, str(self.dev), self.dino_weights, precision="fp32")
            _, maps = parent.score_batches(lab.images[idx[unmasked]], want_maps=True)
            regions[unmasked] = map_region(torch.stack([m.float() for m in maps]))
        self.bank = DefectBank(lab.images[idx], regions)

    def _setup_state(self) -> None:
        state = {
            "parent": self.parent_manifest.model_version,
            "labels_sha256": self.labelled.digest,
            "refine": asdict(self.refine_cfg),
        }
        path = self.out_dir / REFINE_STATE
        if self.resume:
            if not path.is_file() or _read_json(path) != json.loads(json.dumps(state)):
                raise ConfigError(
                    f"{self.out_dir} holds no refinement of this parent on these labels with these settings to resume"
                )
        else:
            write_file_atomic(path, lambda f: f.write(json.dumps(state, indent=2).encode()))
        super()._setup_state()

    # ------------------------------------------------------------------ one step
    def batch_loss(self, x: torch.Tensor, att: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        bank, share = self.bank, 1.0 if self.bank_only else self.refine_cfg.bank_share

        def paste(clean, sim, g):
            return sim if bank is None else bank.paste(clean, sim, g, share)

        loss = step_loss(self.model_cfg, self.train_cfg, self.mods, x, None if bank else att, gen, paste).float()
        return loss + self.labelled_loss(gen)

    def _label_draw(self, gen: torch.Generator) -> np.ndarray:
        """This step's labelled items: half confirmed defects, half confirmed goods (where both exist)."""
        n = self.refine_cfg.label_batch
        pools = [p for p in (self.label_defects, self.label_goods) if len(p)]
        sizes = [n // len(pools) + (1 if i < n % len(pools) else 0) for i in range(len(pools))]
        picks = [
            pool[torch.randint(len(pool), (k,), generator=gen).numpy()] for pool, k in zip(pools, sizes, strict=True)
        ]
        return np.concatenate(picks)

    def labelled_loss(self, gen: torch.Generator) -> torch.Tensor:
        """Recovery of confirmed goods, segmentation targets (goods clean, brushed masks), MIL on every item."""
        cfg, tcfg, mods, lab = self.model_cfg, self.train_cfg, self.mods, self.labelled
        idx = self._label_draw(gen)
        x = lab.images[idx].to(self.dev)
        defect = torch.from_numpy(lab.defect[idx]).to(self.dev)
        pixel = torch.from_numpy(lab.has_mask[idx] | ~lab.defect[idx]).to(self.dev)
        att = None
        if mods.saliency is not None and Variant.of(cfg).single_pass:
            with torch.no_grad():
                att = mods.saliency(x).float()
        inputs = corrupt(cfg, mods.forward, mods.saliency, x, att)
        recon = paste_context(mods.forward(inputs.composite), inputs.context, inputs.mask)
        strong = recon[-x.shape[0] :]
        loss = torch.zeros((), device=self.dev)
        good = ~defect
        if good.any():  # a confirmed good is recovered as itself: the U-Net must not "repair" it into a flag
            loss = loss + combined_loss(x[good], strong[good], tcfg.loss_weights, cfg.scoring.n_scales)
        if mods.head is None:  # a model without a head learns the line's defects through the bank alone
            return loss
        logits = mods.head(head_inputs(x, strong.detach(), cfg.scoring))
        if pixel.any():
            target = lab.masks[idx].to(self.dev) * defect[:, None, None, None].float()
            loss = loss + focal_dice_loss(logits[pixel], target[pixel])
        return loss + mil_loss(logits, defect, cfg, self.refine_cfg.mil_top)

    # ------------------------------------------------------------------ the candidate
    def finalize(self) -> Path:
        """Best weights, normal map, calibration, threshold on labelled items, the held-out comparison,
        lineage; writes the candidate artifact."""
        if self.best is not None:
            self.net.load_state_dict(self.best["state"])
        self.net.eval()
        pipe = self.pipeline()
        if self.model_cfg.scoring.normal_map:
            pipe.normal_map = fit_normal_map(pipe, self.data.images[self.train_idx[:NORMAL_MAP_IMAGES]])
        policy = self.refine_cfg.threshold_policy or self.parent_manifest.threshold_policy
        held_goods = select(self.data.images, self.hold_idx)
        lab, train = self.labelled, self.labelled.train_idx
        if parse_policy(policy, labelled=True).needs_labels:
            # f1 on the training side's labelled items (the held-out ones judge the candidate, never choose)
            _, stats = calibrate(pipe, held_goods, DEFAULT_IMAGE_POLICY)  # statistics, pixel grid, OOD check
            train_scores = pipe.score_batches(lab.images[train])[0] if len(train) else np.zeros(0)
            threshold = self._f1_threshold(policy, np.asarray(stats["scores"]), train_scores, lab.defect[train])
            stats["rule"] = f"policy {policy} on the training side's labelled items"
            stats["labelled_scores"] = [float(s) for s in train_scores]
            stats["labelled_defect"] = [bool(d) for d in lab.defect[train]]
        else:
            # the held-out good images only: the confirmed goods were trained on (their scores pushed down) and
            # were picked as false alarms (high by selection), so neither says what a good part scores
            threshold, stats = calibrate(pipe, held_goods, policy)
        recovery = recovery_check(pipe, self.held_out)
        comparison = self.compare(pipe, threshold)
        manifest = Manifest(
            config=self.model_cfg,
            threshold=threshold,
            calibration=stats,
            training=self._training_record(recovery),
            dino_weights_sha256=dino_weights_hash(self.model_cfg.saliency, self.dino_weights),
            threshold_policy=policy,
            lineage=self._lineage(comparison),
        )
        return save_artifact(self.out_dir, pipe.model, manifest)

    @staticmethod
    def _f1_threshold(policy: str, good: np.ndarray, scores: np.ndarray, defect: np.ndarray) -> float:
        """A labelled policy's threshold (``f1``) from the training side's labelled items."""
        if not (defect.any() and (~defect).any()):
            raise ConfigError(f"policy {policy} chooses from labelled defects and goods: the training side lacks one")
        return float(image_threshold(parse_policy(policy, labelled=True), good, (scores, defect)))

    def compare(self, candidate: Pipeline, threshold: float) -> dict[str, Any]:
        """Parent (at its threshold) and candidate (at ``threshold``) on the held-out labels."""
        lab, held = self.labelled, self.labelled.held_idx
        parent = Pipeline.from_artifact(self.parent_dir, str(self.dev), self.dino_weights,
                                        precision=self.train_cfg.precision)  # fmt: skip
        images, defect = lab.images[held], lab.defect[held]
        p_scores = parent.score_batches(images)[0] if len(held) else np.zeros(0)
        c_scores = candidate.score_batches(images)[0] if len(held) else np.zeros(0)
        p_fig = HeldOutFigures.of(p_scores, defect, parent.threshold)
        c_fig = HeldOutFigures.of(c_scores, defect, threshold)
        why = refusal(p_fig, c_fig)
        return {
            "parent": p_fig.to_json(),
            "candidate": c_fig.to_json(),
            "ids": [lab.ids[i] for i in held],
            "defect": [bool(d) for d in defect],
            "parent_scores": [float(s) for s in p_scores],
            "candidate_scores": [float(s) for s in c_scores],
            "promotable": why is None,
            "refusal": why,
        }

    def _lineage(self, comparison: dict[str, Any]) -> dict[str, Any]:
        pm = self.parent_manifest
        return {
            "parent_version": pm.model_version,
            "parent_weights_sha256": pm.weights_sha256,
            "ancestors": [*pm.lineage.get("ancestors", []), pm.model_version],
            "product": self.labelled.product,
            "labels_sha256": self.labelled.digest,
            "labels": self.labelled.counts(),
            "skipped_labels": dict(list(self.labelled.skipped.items())[:50]),
            "refine": asdict(self.refine_cfg),
            "heldout": comparison,
        }


def refine_model(
    parent_dir: str | Path,
    labelled: LabelledSet,
    data_root: str | Path,
    category: str,
    out_dir: str | Path,
    refine: RefineConfig,
    precision: str | None = None,
    dino_weights: str | None = None,
    device: str = "auto",
    progress: bool = True,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    clock: Literal["wall", "cpu"] = "cpu",
    resume: bool = False,
    checkpoint_minutes: float | None = 2.0,
) -> Path:
    """Refine, compare and save a candidate; returns its directory (a :class:`Refiner` run)."""
    limits = RunLimits(max_steps, max_minutes, None, None, progress, clock=clock)
    refiner = Refiner(parent_dir, labelled, data_root, category, out_dir, refine, precision, dino_weights, device,
                      limits, resume)  # fmt: skip
    refiner.train_cfg = dataclasses.replace(refiner.train_cfg, checkpoint_minutes=checkpoint_minutes)
    return refiner.setup().run()
