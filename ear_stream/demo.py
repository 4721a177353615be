"""``ear-stream demo``: the whole offline job on a generated sample, no data or weights needed."""

from __future__ import annotations

from pathlib import Path

import click

from .config import ModelConfig, TrainConfig
from .data import write_synthetic_category
from .decode import list_images
from .evaluation import evaluate, write_report
from .pipeline import Pipeline
from .results import read_results, summarize
from .scoring import score_files
from .training import train_model


def run_demo(workdir: Path, epochs: int = 3, image_size: int = 64) -> dict:
    workdir = Path(workdir)
    click.secho("ear-stream demo: saliency 'none' (no DINO weights are configured in the demo)", fg="yellow", err=True)
    data = workdir / "data"
    if not (data / "synthetic").is_dir():
        write_synthetic_category(data)
    model_dir = workdir / "models" / "synthetic"
    cfg = ModelConfig(image_size=image_size, saliency="none", base_channels=16)
    train_model(
        data,
        "synthetic",
        model_dir,
        cfg,
        TrainConfig(epochs=epochs, batch_size=8, lr=1e-3),
        mosaic_scale=None,
        device="auto",
    )
    pipe = Pipeline.from_artifact(model_dir)
    result, material = evaluate(pipe, data, "synthetic")
    report = write_report(workdir / "report.html", pipe, result, material, "EAR demo: synthetic")
    score_files(pipe, list_images([str(data / "synthetic" / "test")]), workdir / "results", "synthetic")
    summary = summarize(read_results(workdir / "results"))
    click.echo(f"image AUROC {result.image_auroc:.3f}, pixel AUROC {result.pixel_auroc:.3f}")
    for product, s in summary["products"].items():
        click.echo(f"{product}: {s['count']} scored, {s['anomalies']} flagged, score p50 {s['score_p50']:.4f}")
    click.echo(f"results: {workdir / 'results'}  report: {report}")
    return summary
