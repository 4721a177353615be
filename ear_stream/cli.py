"""The ``ear-stream`` command line (click)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .config import MOSAIC_SCALES, SALIENCY_VARIANTS, SCHEDULES, ModelConfig, TrainConfig

DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda"])


def _warn(msg: str) -> None:
    click.secho(msg, fg="yellow", err=True)


def _mosaic_scale(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        m = int(value)
    except ValueError:
        raise click.BadParameter(f"must be 'auto' or an integer, got {value!r}") from None
    if m < 1:
        raise click.BadParameter(f"must be >= 1, got {m}")
    return m


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ear-stream")
def main() -> None:
    """EAR (Excision And Recovery) visual defect detection.

    Train one model per product on good images only, evaluate it on a labelled
    MVTec-AD-layout folder, score image files into Parquet, or run the Redis
    stream workers. Nothing here downloads anything: DINO weights are a local
    file (--dino-weights or EAR_DINO_WEIGHTS).
    """


@main.command()
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT (MVTec AD layout: CAT/train/good).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--image-size", default=256, show_default=True, help="Side the images are resized to (multiple of 32).")
@click.option("--epochs", default=20, show_default=True, help="Passes over the training images.")
@click.option("--batch-size", default=8, show_default=True, help="Images per optimisation step.")
@click.option("--lr", default=1e-4, show_default=True, help="Adam learning rate.")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="fixed",
    show_default=True,
    help="Learning-rate schedule: fixed, linear warm-up, or SGDR (cosine with restarts).",
)
@click.option("--kernel-size", type=click.Choice(["3", "5"]), default="3", show_default=True, help="U-Net conv kernel.")
@click.option("--width", "base_channels", default=32, show_default=True, help="U-Net base channel count.")
@click.option(
    "--saliency",
    type=click.Choice(SALIENCY_VARIANTS),
    default=None,
    help="dino = full EAR; none = mosaic the whole image (no weights needed); binary = DINO mask without "
    "mosaic hint. Default: dino when DINO weights are given, else none.",
)
@click.option(
    "--dino-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Local DINO ViT-S/8 checkpoint (official .pth or timm layout). Env: EAR_DINO_WEIGHTS.",
)
@click.option(
    "--mosaic-scale",
    default="auto",
    show_default=True,
    help="Mosaic tile size m, or 'auto' to estimate it from the images' edge response (r10).",
)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True, help="Where to train.")
@click.option("--seed", default=0, show_default=True, help="Seed for the split, shuffling and initialisation.")
@click.option("--max-steps", default=None, type=int, help="Stop after this many steps (quick trials).")
def train(
    data_root,
    category,
    out_dir,
    image_size,
    epochs,
    batch_size,
    lr,
    schedule,
    kernel_size,
    base_channels,
    saliency,
    dino_weights,
    mosaic_scale,
    device,
    seed,
    max_steps,
) -> None:
    """Train a model for one product on DATA_ROOT/CATEGORY/train/good.

    A tenth of the good images is held out to calibrate the decision
    threshold. The model directory holds weights.safetensors and manifest.json.
    """
    from .training import train_model

    has_weights = bool(dino_weights or os.environ.get("EAR_DINO_WEIGHTS"))
    if saliency is None:
        saliency = "dino" if has_weights else "none"
        if saliency == "none":
            _warn(
                "No DINO weights configured: training with saliency 'none' (EAR w/o attention, whole image "
                "mosaicked). Pass --dino-weights PATH or set EAR_DINO_WEIGHTS for full EAR."
            )
    m = _mosaic_scale(mosaic_scale)
    try:
        cfg = ModelConfig(
            image_size=image_size, saliency=saliency, kernel_size=int(kernel_size), base_channels=base_channels
        )
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, seed=seed)
        path = train_model(
            data_root,
            category,
            out_dir,
            cfg,
            tcfg,
            mosaic_scale=m,
            dino_weights=dino_weights,
            device=device,
            max_steps=max_steps,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    from .artifact import load_manifest

    man = load_manifest(path)
    click.echo(
        f"model written to {path} (m={man.config.mosaic_scale}, threshold={man.threshold:.4f}, "
        f"version {man.model_version})"
    )


@main.command("eval")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT with test/ and ground_truth/.")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory written by 'train'.",
)
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
@click.option(
    "--dino-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DINO checkpoint, for models trained with saliency dino or binary. Env: EAR_DINO_WEIGHTS.",
)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
def evaluate_cmd(data_root, category, model_dir, report, json_out, batch_size, dino_weights, device) -> None:
    """Image and pixel AUROC of a model on DATA_ROOT/CATEGORY/test."""
    from .evaluation import evaluate, write_report
    from .pipeline import Pipeline

    try:
        pipe = Pipeline.from_artifact(model_dir, device=device, dino_weights=dino_weights)
        result, material = evaluate(pipe, data_root, category, batch_size=batch_size)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    pix = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
    click.echo(
        f"{category}: image AUROC {result.image_auroc:.4f}, pixel AUROC {pix} "
        f"({result.n_good} good, {result.n_defect} defective, {result.ms_per_image:.1f} ms/image)"
    )
    for defect, row in result.per_defect.items():
        click.echo(f"  {defect:<12} n={row['n']:<4} AUROC {row['image_auroc']:.4f}  flagged {row['detected']:.1%}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2))
    if report:
        path = write_report(report, pipe, result, material, title=f"EAR evaluation: {category}")
        click.echo(f"report: {path}")


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory written by 'train'.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Results root; Parquet parts go to OUT/product=P/date=YYYY-MM-DD/.",
)
@click.option("--product", default=None, help="Product name in the rows (default: the model directory's name).")
@click.option(
    "--save-maps",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write heatmap overlays (PNG) here and embed them in the Parquet 'heatmap' column.",
)
@click.option("--batch-size", default=16, show_default=True, help="Images per scoring batch.")
@click.option(
    "--dino-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DINO checkpoint, for models trained with saliency dino or binary. Env: EAR_DINO_WEIGHTS.",
)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
def score(inputs, model_dir, out_dir, product, save_maps, batch_size, dino_weights, device) -> None:
    """Score image files (INPUTS: files, folders or globs) into Parquet.

    Undecodable files are listed on stderr with the reason and the command exits
    with status 2 after scoring the rest.
    """
    from .decode import list_images
    from .pipeline import Pipeline
    from .scoring import score_files

    try:
        files = list_images(list(inputs))
        pipe = Pipeline.from_artifact(model_dir, device=device, dino_weights=dino_weights)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not files:
        raise click.ClickException("no images found in the given inputs")
    report = score_files(pipe, files, out_dir, product or model_dir.name, batch_size, save_maps)
    click.echo(f"scored {report.scored} images into {len(report.written)} Parquet part(s) under {out_dir}")
    for _path, reason, message in report.rejected:
        click.echo(f"rejected [{reason}] {message}", err=True)
    if report.rejected:
        sys.exit(2)


@main.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def results(results_dir, as_json) -> None:
    """Summarise a results tree: rows per product (duplicates by id dropped), anomaly rate, score quantiles."""
    from .results import read_results, summarize

    raw = read_results(results_dir, dedupe=False).num_rows
    summary = summarize(read_results(results_dir))
    summary["raw_rows"] = raw
    summary["duplicates_dropped"] = raw - summary["rows"]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['rows']} unique ids ({summary['duplicates_dropped']} duplicate rows dropped)")
    for product, s in summary["products"].items():
        click.echo(
            f"  {product:<16} n={s['count']:<6} anomalies={s['anomalies']:<5} rate={s['anomaly_rate']:.1%} "
            f"score p50={s['score_p50']:.4f} p95={s['score_p95']:.4f} max={s['score_max']:.4f}"
        )


@main.command("mosaic-search")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder with train/good and a labelled test/ set.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the trial models.")
@click.option("--scales", default=",".join(map(str, MOSAIC_SCALES)), show_default=True, help="Candidate m values.")
@click.option("--image-size", default=128, show_default=True)
@click.option("--epochs", default=5, show_default=True)
@click.option("--width", "base_channels", default=32, show_default=True, help="U-Net base channel count.")
@click.option("--saliency", type=click.Choice(SALIENCY_VARIANTS), default="none", show_default=True)
@click.option("--dino-weights", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True)
def mosaic_search(
    data_root, category, out_dir, scales, image_size, epochs, base_channels, saliency, dino_weights, device, seed
) -> None:
    """Grid search of the mosaic scale m on a labelled validation set (image AUROC per m)."""
    from .evaluation import evaluate
    from .pipeline import Pipeline
    from .training import train_model

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


@main.group()
def weights() -> None:
    """Manage the DINO ViT-S/8 weights file."""


@weights.command("fetch")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def weights_fetch(dest) -> None:
    """Download the official DINO ViT-S/8 checkpoint to DEST (needs internet; the only networked command)."""
    from .saliency import fetch_dino_weights

    try:
        click.echo(f"saved {fetch_dino_weights(dest)}")
    except OSError as exc:
        raise click.ClickException(f"download failed (no internet?): {exc}") from exc


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Where the generated data, model and results go.",
)
@click.option("--epochs", default=3, show_default=True, help="Training epochs for the demo model.")
@click.option("--image-size", default=64, show_default=True)
def demo(workdir, epochs, image_size) -> None:
    """Run the main job on embedded defaults: generate a sample, train, evaluate, score, summarise."""
    from .demo import run_demo

    run_demo(workdir, epochs=epochs, image_size=image_size)


if __name__ == "__main__":
    main()
