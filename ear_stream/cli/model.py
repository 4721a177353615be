"""Training verbs: ``train`` (its options, the configs they describe, the report on what was written),
``simulate`` (the simulated defects training uses) and ``weights`` (the DINO weights file).

Evaluating a trained model is :mod:`.evaluate`'s (``eval``, ``mosaic-search``). The ``--saliency``
choices and help come from the saliency registry (:mod:`ear_stream.model.registry`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from ..model.config import (
    AUTO_WEIGHT_FREE,
    AUTO_WITH_DINO,
    METHODS,
    SALIENCY_CHOICES,
    SCHEDULES,
    ModelConfig,
    ScoringConfig,
    TrainConfig,
    default_keep_context,
    resolve_saliency,
)
from ..model.registry import AUTO, DEFAULT_GRID, DINO_ENV, saliency_help, saliency_spec
from .options import (
    DEVICE_OPTION,
    DINO_OPTION,
    PRECISION_OPTION,
    _mosaic_scale,
    _warn,
    announce_backend,
    default_of,
    tile_options,
)
from .threshold import PolicyOption


@click.command()
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT (MVTec AD layout: CAT/train/good).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option(
    "--image-size",
    default=default_of(ModelConfig, "image_size"),
    show_default=True,
    help="Side the images are resized to (multiple of 32).",
)
@click.option(
    "--epochs",
    default=default_of(TrainConfig, "epochs"),
    show_default=True,
    help="Passes over the training images (an upper bound: --max-minutes usually stops first).",
)
@click.option(
    "--batch-size",
    default=default_of(TrainConfig, "batch_size"),
    show_default=True,
    help="Images per optimisation step.",
)
@click.option("--lr", default=default_of(TrainConfig, "lr"), show_default=True, help="Adam learning rate.")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="fixed",
    show_default=True,
    help="Learning-rate schedule: fixed, linear warm-up, or SGDR (cosine with restarts).",
)
@click.option("--kernel-size", type=click.Choice(["3", "5"]), default="3", show_default=True, help="U-Net conv kernel.")
@click.option(
    "--width",
    "base_channels",
    default=default_of(ModelConfig, "base_channels"),
    show_default=True,
    help="U-Net base channel count.",
)
@click.option(
    "--saliency",
    type=click.Choice(SALIENCY_CHOICES),
    default=AUTO,
    show_default=True,
    help=f"What to excise. auto = {AUTO_WITH_DINO} when DINO weights are configured, else {AUTO_WEIGHT_FREE} (best "
    f"weight-free variant on real data, BENCHMARKS.md). {saliency_help()}",
)
@click.option(
    "--grid", type=int, default=None, help=f"Attention grid side of the weight-free variants (default {DEFAULT_GRID})."
)
@click.option(
    "--keep-context/--no-keep-context",
    default=None,
    help="Keep the pixels that were not excised verbatim in the reconstruction (the U-Net only inpaints). "
    "Default: off (it lost 0.02 image AUROC to plain spectral on Magnetic Tile, BENCHMARKS.md).",
)
@click.option("--max-minutes", type=float, default=None, help="Wall-clock training budget; stops at the first limit.")
@click.option("--box", type=int, default=None, help="MSGMS box filter (odd; <= 1 disables). Default: 21·size/256.")
@click.option("--scales", type=int, default=None, help="MSGMS scales. Default: 3 at 256 px, one fewer per halving.")
@click.option(
    "--border", type=int, default=None, help="Pixels at each edge left out of the image max. Default: box // 2."
)
@click.option(
    "--normal-map/--no-normal-map",
    default=False,
    show_default=True,
    help="Subtract the mean MSGMS map of the good training images before the max (aligned crops whose edges "
    "are normally hard to recover).",
)
@DINO_OPTION
@click.option(
    "--mosaic-scale",
    default="auto",
    show_default=True,
    help="Mosaic tile size m, or 'auto' to estimate it from the images' edge response (r10).",
)
@DEVICE_OPTION
@click.option("--seed", default=0, show_default=True, help="Seed for the split, shuffling and initialisation.")
@click.option("--max-steps", default=None, type=int, help="Stop after this many steps (quick trials).")
@click.option(
    "--train-crop",
    type=int,
    default=None,
    help="Native-resolution training: random S×S crops (S multiple of 32) of images kept at --scale instead of "
    "whole images resized to --image-size; inference then runs over tiles of the whole image (--tile).",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0.0, min_open=True, max=8.0),
    default=None,
    help="With --train-crop: resample every image by this factor, aspect kept (1.0 = native pixels, the default).",
)
@tile_options
@click.option("--hflip", is_flag=True, help="Augment: random horizontal flips.")
@click.option("--vflip", is_flag=True, help="Augment: random vertical flips.")
@click.option("--rot90", is_flag=True, help="Augment: random quarter turns (textures without a fixed orientation).")
@click.option(
    "--jitter",
    type=click.FloatRange(0.0, 0.5, max_open=True),
    default=0.0,
    show_default=True,
    help="Augment: brightness and contrast changed by up to this fraction (keep it small: lighting faults are real).",
)
@click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Held-out loss every N steps.")
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N evaluations without a better held-out loss; the best weights are kept. Needs --eval-every.",
)
@click.option(
    "--checkpoint-every", type=click.IntRange(min=1), default=None, help="Write OUT/checkpoint.pt every N steps."
)
@click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="... and/or every M minutes.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a killed run from OUT/checkpoint.pt (same options): reaches the weights of an uninterrupted run.",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the U-Net for training (GPU speed-up).")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="ear",
    show_default=True,
    help="ear = one excision + one U-Net pass; riad = the RIAD baseline (random disjoint masks, 12 U-Net passes "
    "at inference), same U-Net, losses and scorer.",
)
@click.option(
    "--simulate",
    type=click.FloatRange(0.0, 1.0),
    default=default_of(TrainConfig, "simulate"),
    show_default=True,
    help="Share of training images given a simulated defect (noise blobs, cracks, holes; patches, textures, "
    "stains, blur): the U-Net learns to return the clean image. 0 = train on plain good images only.",
)
@click.option(
    "--defect-weight",
    type=click.FloatRange(min=0.0),
    default=default_of(TrainConfig, "defect_weight"),
    show_default=True,
    help="Extra weight of the recovery error inside simulated defects.",
)
@click.option(
    "--head/--no-head",
    default=default_of(ModelConfig, "head"),
    show_default="auto",
    help="Score with a learned anomaly head on [input, recovery, MSGMS map], trained on the simulated defects "
    "(needs --simulate > 0), instead of the plain MSGMS max. Default: on when --simulate > 0 (EAR, no normal map).",
)
@click.option("--head-width", default=default_of(ModelConfig, "head_width"), show_default=True, help="Head channels.")
@click.option(
    "--threshold-policy",
    cls=PolicyOption,
    labelled=False,  # no labelled defects at training time: f1 is refused before a minute is spent
    default=default_of(TrainConfig, "threshold_policy"),
    show_default=True,
    intro="Image threshold policy applied after training: ",
    outro=" Change it later with 'ear-stream threshold'.",
)
@PRECISION_OPTION
def train(data_root: Path, category: str, out_dir: Path, **opts: Any) -> None:
    """Train a model for one product on DATA_ROOT/CATEGORY/train/good.

    A tenth of the good images is held out to calibrate the decision
    threshold. The model directory holds weights.safetensors and manifest.json,
    curve.jsonl/curve.png when the held-out loss is recorded, and checkpoint.pt
    with --checkpoint-every/--checkpoint-minutes.

    \b
    Long run that survives a crash, stopped early when it stops improving:
      ear-stream train DATA --category tile --out models/tile --max-minutes 60 \\
          --eval-every 200 --patience 5 --checkpoint-minutes 5
      ear-stream train DATA --category tile --out models/tile ... --resume
    Native resolution (small defects): --train-crop 128 --scale 1.0 [--tile 256]
    """
    from ..inspect.training import train_model

    cfg, tcfg = model_config_from(opts), train_config_from(opts)
    announce_backend(opts["precision"], opts["device"])
    path = train_model(
        data_root,
        category,
        out_dir,
        cfg,
        tcfg,
        mosaic_scale=_mosaic_scale(opts["mosaic_scale"]),
        dino_weights=opts["dino_weights"],
        device=opts["device"],
        max_steps=opts["max_steps"],
        max_minutes=opts["max_minutes"],
        resume=opts["resume"],
    )
    report_trained(path)


def model_config_from(opts: dict[str, Any]) -> ModelConfig:
    """The ModelConfig ``train``'s options describe (saliency resolved, native-resolution options checked)."""
    has_weights = bool(opts["dino_weights"] or os.environ.get(DINO_ENV))
    saliency = resolve_saliency(opts["saliency"], has_weights)
    if opts["method"] == "ear":
        why = "(--saliency auto: no DINO weights configured)" if opts["saliency"] == AUTO and not has_weights else ""
        _warn(f"saliency: {saliency} {why}".rstrip())
    crop = opts["train_crop"]
    if opts["scale"] is not None and crop is None:
        raise click.UsageError("--scale applies to native-resolution training: give --train-crop too")
    if (opts["tile"] is not None or opts["tile_overlap"] is not None) and crop is None:
        raise click.UsageError("--tile applies to native-resolution models: give --train-crop too")
    grid = opts["grid"]
    cfg = ModelConfig(
        image_size=crop or opts["image_size"],
        scale=(1.0 if opts["scale"] is None else opts["scale"]) if crop else None,
        tile=opts["tile"],
        tile_overlap=opts["tile_overlap"],
        saliency=saliency,
        kernel_size=int(opts["kernel_size"]),
        base_channels=opts["base_channels"],
        method=opts["method"],
        scoring=ScoringConfig(
            scales=opts["scales"], box=opts["box"], border=opts["border"], normal_map=opts["normal_map"]
        ),
        saliency_params={"grid": grid} if grid and saliency_spec(saliency).weight_free else {},
        keep_context=default_keep_context(saliency) if opts["keep_context"] is None else opts["keep_context"],
        head=opts["head"] and opts["method"] == "ear",
        head_width=opts["head_width"],
    )
    if cfg.head and opts["simulate"] <= 0:
        raise click.UsageError("--head learns from simulated defects: give --simulate > 0 (or --no-head)")
    return cfg


def train_config_from(opts: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of ``train``'s options: every option named after a TrainConfig field fills it."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in opts.items() if k in fields}, compile=opts["compile_"])


def report_trained(path: Path) -> None:
    """One line on what was written, and the recovery check's verdict (a warning when the U-Net is degenerate)."""
    from ..inspect.recovery import RecoveryCheck
    from ..model.artifact import load_manifest

    man = load_manifest(path)
    click.echo(
        f"model written to {path} (saliency {man.config.saliency}, keep_context {man.config.keep_context}, "
        f"m={man.config.mosaic_scale}, "
        f"threshold={man.threshold:.4f}, {man.training['steps']} steps, stopped by {man.training['stop_reason']}, "
        f"version {man.model_version})"
    )
    recovery = man.training.get("recovery")
    if recovery:
        check = RecoveryCheck(
            **{k: recovery[k] for k in ("recon_error", "flat_error", "excised_error", "colour_cast", "n_images")}
        )
        (_warn if check.degenerate else click.echo)(check.verdict())


@click.group()
def weights() -> None:
    """Manage the DINO ViT-S/8 weights file."""


@weights.command("fetch")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def weights_fetch(dest) -> None:
    """Download the official DINO ViT-S/8 checkpoint to DEST (needs internet; the only networked command)."""
    from ..model.saliency import fetch_dino_weights

    try:
        click.echo(f"saved {fetch_dino_weights(dest)}")
    except OSError as exc:
        raise click.ClickException(f"download failed (no internet?): {exc}") from exc


@click.command("simulate")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT (its train/good images are used).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@click.option("--n", default=8, show_default=True, help="Images shown.")
@click.option("--image-size", default=128, show_default=True, help="Side the images are resized to.")
@click.option("--seed", default=0, show_default=True, help="Seed of the simulated defects.")
def simulate(data_root, category, out_path, n, image_size, seed) -> None:
    """Write a gallery of the simulated defects training uses: inputs, corrupted images, target masks.

    \b
      ear-stream simulate DATA --category magnetic_tile --out docs/simulated_defects.png
    """
    from ..inspect.simulate import gallery
    from ..inspect.visualize import image_rgb, to_png
    from ..io.datasets import load_tensor, train_images

    files = train_images(data_root, category)[:n]
    grid = gallery(load_tensor(files, image_size, progress=False), seed=seed, columns=min(n, 8))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(to_png(image_rgb(grid)))
    click.echo(f"gallery of {len(files)} images written to {out_path}")
