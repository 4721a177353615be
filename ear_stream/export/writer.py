"""``ear-stream export``: write a model's whole scoring function as an ONNX graph, an OpenVINO IR or an
AOTInductor package, with export.json (:mod:`ear_stream.model.exported`) and a parity check.

Everything is written into a temporary directory beside ``OUT`` and renamed into place at the end: a failed
export (a variant a format cannot express, a missing exporter, a parity failure) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..inspect.pipeline import Pipeline
from ..model.artifact import MANIFEST_FILE, ArtifactError, load_manifest, sha256_file
from ..model.exported import (
    EXPORT_FILE,
    FORMATS,
    GRAPH_FILES,
    RUNTIME_PACKAGES,
    ExportInfo,
    is_export_dir,
    open_exported,
    read_export_info,
    require_runtime,
    runtime_version,
)
from ..model.precision import resolve_precision
from .graph import INPUT_NAME, OUTPUT_NAMES, ExportError, GraphOptions, ScoringGraph, check_exportable

#: relative score difference an exported fp32 graph must stay within against the torch fp32 pipeline
SCORE_RTOL_FP32 = 1e-3
#: the same for a bf16 path (OpenVINO's bf16 hint, a bf16 AOTI package), against the torch bf16 pipeline, relative
#: to max(|score|, threshold) (:func:`score_difference`): bf16 moves scores far below the threshold by a share of
#: the threshold (the torch bf16 path itself does, against fp32), which cannot flip a verdict
SCORE_RTOL_BF16 = 5e-2
#: generated images the export's own parity check scores (the tests and benchmarks score many more)
PARITY_IMAGES = 6


@dataclass
class ExportReport:
    out: Path
    info: ExportInfo
    #: the export's parity check: max relative score difference and max map difference on generated images
    score_rel_diff: float
    map_abs_diff: float


def score_difference(got: np.ndarray, want: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Per-image relative score difference: ``|got − want| / |want|`` (the fp32 criterion), or, given the
    ``threshold``, ``/ max(|want|, threshold)`` (the bf16 criterion, see :data:`SCORE_RTOL_BF16`)."""
    floor = 1e-6 if threshold is None else max(abs(float(threshold)), 1e-6)
    return np.abs(np.asarray(got, np.float64) - want) / np.maximum(np.abs(np.asarray(want, np.float64)), floor)


def in_tolerance_band(want: np.ndarray, threshold: float, bf16: bool) -> np.ndarray:
    """Where a verdict may flip within the tolerance: the score lies within rtol of the threshold, relative to
    what :func:`score_difference` is relative to on that path (``|score|`` in fp32, max(|score|, threshold)
    in bf16)."""
    want = np.asarray(want, np.float64)
    rtol = SCORE_RTOL_BF16 if bf16 else SCORE_RTOL_FP32
    scale = np.maximum(np.abs(want), threshold) if bf16 else np.abs(want)
    return np.abs(want - threshold) <= rtol * scale


def export_precision(fmt: str, precision: str) -> str:
    """What the export records and builds: ONNX graphs are fp32; OpenVINO chooses at load time (``runtime``:
    its bf16 hint follows ``--precision`` where it is loaded); an AOTI package is compiled for one path
    (``auto`` resolved on the exporting host: pass fp32 or bf16 for a line box with other units)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ExportError(f"--precision {precision} is not exported (auto, fp32 or bf16)")
    if fmt == "onnx":
        if precision == "bf16":
            raise ExportError("ONNX graphs are exported in fp32 (--precision fp32 or auto); OpenVINO runs bf16")
        return "fp32"
    if fmt == "openvino":
        return "runtime"
    return resolve_precision(precision, "cpu").name


def graph_options(fmt: str, precision: str) -> GraphOptions:
    if fmt == "onnx":
        return GraphOptions()
    if fmt == "openvino":
        return GraphOptions(fft_dtype=torch.float32)  # OpenVINO's DFT has no float64
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return GraphOptions(fused=True, network_dtype=dtype)


def parity_images(size: int, n: int = PARITY_IMAGES, seed: int = 0) -> torch.Tensor:
    """Smooth textured images with a few spots: inputs for a parity check that exercise the mask and the head."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, max(2, size // 8), max(2, size // 8)), generator=g)
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    images = 0.6 * images + 0.4 * torch.rand((n, 1, size, size), generator=g)
    for i in range(n):
        y, x = (int(v) for v in torch.randint(0, size - size // 6, (2,), generator=g))
        images[i, :, y : y + size // 8, x : x + size // 8] = float(i % 2)
    return images.clamp(0, 1)


def _quiet():  # type: ignore[no-untyped-def]
    """The exporters print progress and warnings of their own; the CLI shows its own progress."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _write_onnx(graph: ScoringGraph, example: torch.Tensor, out: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        torch.onnx.export(
            graph, (example,), str(out / "model.onnx"), dynamo=True, external_data=False,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch},),
        )  # fmt: skip


def _write_openvino(graph: ScoringGraph, example: torch.Tensor, out: Path) -> None:
    """Through OpenVINO's PyTorch frontend (its ONNX frontend reads the spectral saliency's DFTs as NaN)."""
    import openvino as ov

    with torch.no_grad(), _quiet():
        model = ov.convert_model(graph, example_input=example, input=[ov.PartialShape([-1, *example.shape[1:]])])
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)


def _write_aoti(graph: ScoringGraph, example: torch.Tensor, out: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), _quiet():
        program = torch.export.export(graph, (example,), dynamic_shapes=({0: batch},), strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(out / "model.pt2"))


def _require_exporter(fmt: str) -> None:
    """The packages writing the format needs, checked before anything runs (one line naming them)."""
    needed = {"onnx": ("onnx", "onnxscript"), "openvino": ("openvino",), "aoti": ()}[fmt]
    import importlib.util

    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"exporting {fmt} needs {', '.join(missing)}: pip install {' '.join(missing)} "
            "(or pip install 'ear-stream[export]')"
        )
    require_runtime(fmt)


def export_model(
    model_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    precision: str = "auto",
    dino_weights: str | os.PathLike | None = None,
    force: bool = False,
    progress=None,  # type: ignore[no-untyped-def]  # a callable taking one status line
) -> ExportReport:
    """Export ``model_dir`` as ``fmt`` into ``out`` (see the module doc); returns the parity check's figures."""
    say = progress or (lambda _line: None)
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    _check_out(Path(model_dir), out, force)
    if is_export_dir(model_dir):
        raise ExportError(f"{model_dir} is an exported model already: export the trained model directory it came from")
    _require_exporter(fmt)
    built = export_precision(fmt, precision)
    say(f"loading {model_dir}")
    torch_pipe = Pipeline.from_artifact(model_dir, device="cpu", dino_weights=dino_weights, precision="fp32")
    # the manifest copy must be the one the export describes (checked below: a threshold revision while the
    # export runs must not leave export.json and its manifest copy saying different things)
    manifest_bytes = (Path(model_dir) / MANIFEST_FILE).read_bytes()
    check_exportable(torch_pipe.config)
    graph = ScoringGraph(torch_pipe, graph_options(fmt, built)).eval()
    size = torch_pipe.config.image_size
    example = parity_images(size, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        say(f"writing the {fmt} graph")
        writer = {"onnx": _write_onnx, "openvino": _write_openvino, "aoti": _write_aoti}[fmt]
        try:
            writer(graph, example, staging)
        except Exception as exc:  # an exporter's or compiler's own failure: one line, nothing written
            raise ExportError(f"the {fmt} exporter failed: {type(exc).__name__}: {str(exc).strip()[:500]}") from exc
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
        if load_manifest(staging).model_version != torch_pipe.model_version:
            raise ExportError(
                f"{model_dir} changed while it was exported (a threshold revision?): run the export again"
            )
        product = Path(os.path.abspath(model_dir)).name  # models/<product>, not the version folder a link names
        info = _describe(torch_pipe, product, fmt, built, staging)
        (staging / EXPORT_FILE).write_text(json.dumps(info.to_json(), indent=2))
        say("checking parity against the torch pipeline")
        check_precision = "fp32" if built in ("fp32", "runtime") else built
        score_diff, map_diff = parity(staging, Pipeline.from_artifact(
            model_dir, device="cpu", dino_weights=dino_weights, precision=check_precision), check_precision)  # fmt: skip
        rtol = info.tolerance["score_rtol"]
        if not score_diff <= rtol:
            raise ExportError(
                f"the exported {fmt} graph's scores differ from the torch pipeline's by {score_diff:.2e} (relative), "
                f"over the tolerance {rtol:.0e}: nothing written"
            )
        info.tolerance["measured_score_rel_diff"] = float(score_diff)
        info.tolerance["measured_map_abs_diff"] = float(map_diff)
        (staging / EXPORT_FILE).write_text(json.dumps(info.to_json(), indent=2))
        _check_out(Path(model_dir), out, force)  # again: minutes have passed since the first check
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(out, info, score_diff, map_diff)


def _check_out(model_dir: Path, out: Path, force: bool) -> None:
    """``--out`` must be new, empty, or (with ``--force``) an earlier export holding nothing else; never a link,
    the model, a folder holding it, or a folder inside it (``--force`` would delete the model)."""
    model, target = model_dir.resolve(), out.resolve()
    if target == model or target in model.parents or model in target.parents:
        raise ExportError(f"--out {out} overlaps the model directory {model_dir}: write the export somewhere else")
    if out.is_symlink():
        raise ExportError(f"--out {out} is a link: name the directory itself")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise ExportError(f"{out} exists and is not empty: choose another --out or pass --force to replace it")
    try:
        info = read_export_info(out) if out.is_dir() else None
    except ArtifactError:
        info = None
    allowed = set() if info is None else {EXPORT_FILE, MANIFEST_FILE, *GRAPH_FILES[info.format]}
    held = {p.name for p in out.iterdir()} if out.is_dir() else {out.name}
    if info is None or not held <= allowed or any((out / name).is_dir() for name in held):
        raise ExportError(f"{out} is not an earlier export holding only its own files: --force replaces only exports")


def parity(
    export_dir: Path, torch_pipe: Pipeline, precision: str, images: torch.Tensor | None = None
) -> tuple[float, float]:
    """Max relative score difference and max absolute map difference of an exported directory against the
    torch pipeline on ``images`` (default: generated ones)."""
    exported = open_exported(export_dir, precision=precision)
    images = parity_images(torch_pipe.config.image_size) if images is None else images
    expected = torch_pipe.score_tensor(images, want_maps=True)
    score, dmap, _, _ = exported.runner(images)
    assert expected.maps is not None  # want_maps=True
    rel = score_difference(score.numpy(), expected.scores, torch_pipe.threshold if precision == "bf16" else None)
    return float(rel.max()), float((dmap - expected.maps).abs().max())


def _describe(pipe: Pipeline, product: str, fmt: str, precision: str, staging: Path) -> ExportInfo:
    size = pipe.config.image_size
    files = {name: sha256_file(staging / name) for name in GRAPH_FILES[fmt]}
    files[MANIFEST_FILE] = sha256_file(staging / MANIFEST_FILE)
    rtol = SCORE_RTOL_BF16 if precision == "bf16" else SCORE_RTOL_FP32  # OpenVINO's is checked in fp32
    return ExportInfo(
        format=fmt,
        model_version=pipe.model_version,
        product=product,
        image_size=size,
        threshold=pipe.threshold,
        pixel_threshold=pipe.pixel_threshold,
        precision=precision,
        files=files,
        tolerance={
            "score_rtol": rtol,
            "score_rtol_bf16": SCORE_RTOL_BF16,
            "relative_to": "max(|score|, threshold)" if precision == "bf16" else "|score|",
            "bf16_relative_to": "max(|score|, threshold)",
        },
        input={
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "resize": f"8-bit RGB / 255, then bilinear with antialias to {size}x{size} (aspect not kept)",
        },
        outputs={
            "score": "[batch] image score; anomalous when score > threshold",
            "map": f"[batch, 1, {size}, {size}] the map the score is the max of (border band zeroed)",
            "recon": f"[batch, 3, {size}, {size}] the recovered image",
            "mask_ratio": "[batch] share of pixels excised",
        },
        versions={"torch": torch.__version__, **_runtime_versions(fmt)},
        created_at=datetime.now(timezone.utc).isoformat(),
    )


def _runtime_versions(fmt: str) -> dict[str, str]:
    """The runtime package's version (the AOTI package's runtime is torch, recorded already)."""
    return {} if fmt == "aoti" else {RUNTIME_PACKAGES[fmt]: runtime_version(fmt)}
