"""``ear-stream export``: a trained model's whole scoring function for runtimes outside this package."""

from __future__ import annotations

from pathlib import Path

import click

from ..model.config import EXPORT_FORMATS
from .options import DINO_OPTION, PRECISION_OPTION


@click.command("export")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    required=True,
    help="onnx = one ONNX graph of standard operators (ONNX Runtime, CPU or CUDA); openvino = an OpenVINO IR "
    "(model.xml/.bin; bf16 chosen where it is loaded); aoti = an AOTInductor package (model.pt2, the extension's "
    "kernels inside) for C++ through torch::inductor::AOTIModelPackageLoader.",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory to write (new or empty)."
)
@click.option("--force", is_flag=True, help="Replace --out when it already holds files.")
@PRECISION_OPTION
@DINO_OPTION
def export_cmd(model_dir, fmt, out, force, precision, dino_weights) -> None:
    """Export MODEL_DIR (images → saliency → excise/mosaic → U-Net → MSGMS → head → score and map).

    The graph takes a float32 batch [B, 3, S, S], RGB in [0, 1], resized as the model expects (any B), and
    returns the image scores, the anomaly maps, the recoveries and the mask ratios. OUT/export.json says
    what a runtime needs: input layout and range, threshold(s), model version, precision, the sha256 of
    every file. The export is checked against the torch pipeline on generated images before it is kept
    (fp32: relative score difference <= 1e-3); nothing is written when anything fails.

    \b
      ear-stream export models/tile --format onnx --out exported/tile-onnx
      ear-stream score imgs/ --model exported/tile-onnx --out results/     # the same rows, run by ONNX Runtime
      python tools/export/onnx_score.py exported/tile-onnx imgs/*.png      # no ear_stream needed
    \b
    --precision: onnx is fp32; openvino records none (its bf16 hint is chosen where it is loaded, by the
    same rule as --precision auto); aoti compiles the U-Net and head for the precision chosen here.
    Runtimes: onnx needs onnxruntime (and onnx, onnxscript to write it), openvino needs openvino
    (pip install 'ear-stream[export]'); aoti needs only torch.
    """
    from ..export.writer import export_model

    report = export_model(
        model_dir, fmt, out, precision, dino_weights, force, progress=lambda line: click.echo(line, err=True)
    )
    info = report.info
    click.echo(
        f"exported {model_dir} ({info.model_version}) as {fmt} into {report.out} (precision {info.precision}); "
        f"parity against torch: scores within {report.score_rel_diff:.1e} relative, maps within "
        f"{report.map_abs_diff:.1e} (tolerance {info.tolerance['score_rtol']:.0e})"
    )
