"""Evaluation verbs: ``eval`` (AUROC and the operating point of a trained model on a labelled test set, with
the scoring optionally overridden and the threshold recalibrated for it) and ``mosaic-search`` (image
AUROC per mosaic scale over short trial trainings).

Training is :mod:`.model`'s; scoring image files into Parquet is :mod:`.batch`'s.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..model.config import MOSAIC_SCALES, SALIENCY_VARIANTS, ModelConfig, TrainConfig
from .options import DEVICE_OPTION, DINO_OPTION, MODEL_OPTION, PRECISION_OPTION, _warn, announce_backend, tile_options


def recalibrate_for_eval(pipe, model_dir: Path, data_root: Path) -> None:  # type: ignore[no-untyped-def]
    """The stored threshold belongs to the model's own scoring: recalibrate it for the overridden one."""
    from ..errors import EarStreamError
    from ..inspect.thresholds import recalibrate
    from ..model.artifact import load_manifest

    manifest = load_manifest(model_dir)
    try:
        threshold = recalibrate(pipe, manifest, data_root)
    except EarStreamError as exc:  # no training images here, or a policy that needs labels
        _warn(
            f"scoring overridden, but the threshold could not be recalibrated ({exc}): the false rejects and "
            f"escapes below compare the new scores with the stored threshold {manifest.threshold:.4g}"
        )
        return
    _warn(
        f"scoring overridden: threshold recalibrated by {manifest.threshold_policy} on the held-out good "
        f"images: {threshold:.4g} (stored: {manifest.threshold:.4g})"
    )


@click.command("eval")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT with test/ and ground_truth/.")
@MODEL_OPTION
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a self-contained HTML report (ROC curve, per-defect table, worst examples).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write metrics as JSON (image_auroc, pixel_auroc, n_good, n_defect, per_defect, ...).",
)
@click.option("--batch-size", default=16, show_default=True, help="Images per scoring batch.")
@DINO_OPTION
@DEVICE_OPTION
@PRECISION_OPTION
@click.option("--box", type=int, default=None, help="Override the model's MSGMS box-filter size (k <= 1 disables).")
@click.option("--median/--no-median", default=None, help="Override the model's 3x3 median before the gradients.")
@click.option("--border", type=int, default=None, help="Override the pixels at each edge left out of the score.")
@tile_options
def evaluate_cmd(
    data_root,
    category,
    model_dir,
    report,
    json_out,
    batch_size,
    dino_weights,
    device,
    precision,
    box,
    median,
    border,
    tile,
    tile_overlap,
) -> None:
    """Image and pixel AUROC of a model on DATA_ROOT/CATEGORY/test."""
    announce_backend(precision, device)
    from ..inspect.evaluation import evaluate, write_report
    from ..inspect.pipeline import Pipeline

    pipe = Pipeline.from_artifact(model_dir, device, dino_weights, tile, tile_overlap, precision=precision)
    overrides = {k: v for k, v in {"box": box, "median": median, "border": border}.items() if v is not None}
    if overrides:
        pipe.config.scoring = dataclasses.replace(pipe.config.scoring, **overrides)
        recalibrate_for_eval(pipe, model_dir, data_root)
    click.echo(f"saliency: {pipe.config.saliency} {pipe.config.saliency_params or ''}".rstrip(), err=True)
    result, material = evaluate(pipe, data_root, category, batch_size=batch_size)
    pix = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
    click.echo(
        f"{category}: image AUROC {result.image_auroc:.4f}, pixel AUROC {pix} "
        f"({result.n_good} good, {result.n_defect} defective, {result.ms_per_image:.1f} ms/image)"
    )

    def fmt(v) -> str:  # type: ignore[no-untyped-def]
        return "n/a" if v is None or v != v else f"{v:.4f}"

    click.echo(
        f"  image F1-max {fmt(result.image_f1_max)}; at threshold {result.threshold:.4g}: false rejects "
        f"{fmt(result.false_reject_rate)}, escapes {fmt(result.escape_rate)}; pixel F1-max "
        f"{fmt(result.pixel_f1_max)}, AUPRO@0.3 {fmt(result.aupro_30)}"
    )
    for defect, row in result.per_defect.items():
        click.echo(f"  {defect:<12} n={row['n']:<4} AUROC {row['image_auroc']:.4f}  flagged {row['detected']:.1%}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2))
    if report:
        path = write_report(report, pipe, result, material, title=f"EAR evaluation: {category}")
        click.echo(f"report: {path}")


@click.command("mosaic-search")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder with train/good and a labelled test/ set.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the trial models.")
@click.option("--scales", default=",".join(map(str, MOSAIC_SCALES)), show_default=True, help="Candidate m values.")
@click.option("--image-size", default=128, show_default=True, help="Side the images are resized to for the trials.")
@click.option("--epochs", default=5, show_default=True, help="Training epochs of each trial model.")
@click.option("--width", "base_channels", default=32, show_default=True, help="U-Net base channel count.")
@click.option(
    "--saliency",
    type=click.Choice(SALIENCY_VARIANTS),
    default="none",
    show_default=True,
    help="Saliency variant of the trial models (see train --help).",
)
@DINO_OPTION
@DEVICE_OPTION
@click.option("--seed", default=0, show_default=True, help="Seed of every trial (split, order, initialisation).")
def mosaic_search(
    data_root, category, out_dir, scales, image_size, epochs, base_channels, saliency, dino_weights, device, seed
) -> None:
    """Grid search of the mosaic scale m on a labelled validation set (image AUROC per m)."""
    from ..inspect.evaluation import evaluate
    from ..inspect.pipeline import Pipeline
    from ..inspect.training import train_model

    table = {}
    for m in [int(s) for s in scales.split(",")]:
        cfg = ModelConfig(image_size=image_size, saliency=saliency, base_channels=base_channels)
        path = train_model(
            data_root,
            category,
            out_dir / f"m{m}",
            cfg,
            TrainConfig(epochs=epochs, seed=seed),
            mosaic_scale=m,
            dino_weights=dino_weights,
            device=device,
        )
        res, _ = evaluate(Pipeline.from_artifact(path, device=device, dino_weights=dino_weights), data_root, category)
        table[m] = res.image_auroc
        click.echo(f"m={m:<3} image AUROC {res.image_auroc:.4f}")
    best = max(table, key=lambda k: table[k])
    click.echo(f"best m = {best}")
    (out_dir / "mosaic_search.json").write_text(json.dumps({"auroc": table, "best": best}, indent=2))
