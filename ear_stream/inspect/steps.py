"""What one optimisation step computes: the corrupted inputs, simulated defects, the losses of U-Net and head.

Owns the step's arithmetic, shared by the training loop (:mod:`.training`), the held-out loss of the
learning curve and the speed benchmarks: which inputs a variant's U-Net sees (both passes of a two-pass
variant, so training matches inference), the simulated defects the recovery must undo and the learned
head must segment, and the learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..model import riad
from ..model.config import ModelConfig, TrainConfig
from ..model.head import focal_dice_loss, head_inputs
from ..model.reference import combined_loss
from ..model.saliency import SaliencyModule
from .simulate import SimulatedBatch, simulate_defects
from .variant import Forward, Variant, paste_context, two_pass_attention


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """fixed, linear warm-up (Goyal et al.) or SGDR (cosine with restarts every epoch ×2)."""
    if cfg.schedule == "fixed":
        return None
    if cfg.schedule == "warmup":
        warm = max(1, cfg.warmup_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, steps_per_epoch), T_mult=2)


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
    unet: Forward,
    saliency: SaliencyModule | None,
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
    if variant.two_pass and saliency is not None:
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
    saliency: SaliencyModule | None
    head: Callable[[torch.Tensor], torch.Tensor] | None = None  # head inputs → logits in fp32


#: what may replace simulated defects by other ones (``refine``'s defect bank): (clean, simulated, generator) →
#: simulated
Paste = Callable[[torch.Tensor, SimulatedBatch, torch.Generator], SimulatedBatch]


def step_loss(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    mods: StepModules,
    x: torch.Tensor,
    att,
    gen: torch.Generator,
    paste: Paste | None = None,
) -> torch.Tensor:
    """One step's loss; attention not given (not cached) is computed here, on the image the model is shown.

    With ``tcfg.simulate`` a share of the batch gets a simulated defect first: the
    U-Net must return the clean image (its error inside the defect weighs
    ``1 + defect_weight``), and the head, when the model has one, must segment it.
    ``paste`` (``refine``) may replace some of the simulated defects by confirmed ones.
    """
    saliency, variant = mods.saliency, Variant.of(cfg)
    if variant.is_riad:
        return combined_loss(
            x, riad.training_reconstruction(mods.forward, x, gen), tcfg.loss_weights, cfg.scoring.n_scales
        )
    clean, defect = x, None
    if tcfg.simulate > 0:
        sim = simulate_defects(x, gen, tcfg.simulate)
        if paste is not None:
            sim = paste(x, sim, gen)
        x, defect, att = sim.images, sim.mask, None  # attention of the corrupted image, as at inference
    if att is None and saliency is not None and variant.single_pass:
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
def heldout_loss(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    mods: StepModules,
    modules: Sequence[nn.Module],
    images: torch.Tensor,
    attention: torch.Tensor | None,
    batch: int = 16,
) -> float:
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
