"""Exported models: the directory ``ear-stream export`` writes, read back and run by another runtime.

Layout (docs/design.md, "Exported models")::

    OUT/export.json      what a runtime needs to decide: format, input (shape, layout, range, resize),
                         outputs, threshold(s), model version, precision, the parity tolerance, and the
                         sha256 of every other file
    OUT/manifest.json    the model's manifest, as it was when exported (thresholds, calibration, config)
    OUT/model.onnx | model.xml + model.bin | model.pt2     the graph

Loading checks every hash before anything is run (a replaced graph is refused like replaced weights), and
imports a format's runtime only when that format is opened: a missing runtime is one line naming the
package to install. The runners take and return numpy/torch float32 arrays; the pipeline wraps them
(:meth:`ear_stream.inspect.pipeline.Pipeline.from_export`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifact import MANIFEST_FILE, ArtifactError, Manifest, load_manifest, sha256_file
from .config import EXPORT_FORMATS, EXPORT_RUNTIME_PACKAGES, RUNTIME_CHOICES  # noqa: F401  (re-exported)

EXPORT_FILE = "export.json"
EXPORT_FORMAT_VERSION = 1
#: the graph files of each format, by fixed name (export.json must list exactly these and the manifest); the
#: first is what the runtime loads
GRAPH_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin"), "aoti": ("model.pt2",)}
#: what ``pip install`` brings each format's runtime (the ``export`` extra installs all of them)
RUNTIME_PACKAGES = EXPORT_RUNTIME_PACKAGES
FORMATS = EXPORT_FORMATS
#: export.json is small; a larger file is not read
MAX_EXPORT_JSON_BYTES = 1 << 20
#: the largest input side an export.json may state (the graph is one fixed square size)
MAX_EXPORT_IMAGE_SIZE = 8192

#: a runner: float32 images [B, 3, S, S] → (score [B], map [B, 1, S, S], recon [B, 3, S, S], mask_ratio [B])
Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class RuntimeMissing(ArtifactError):
    """The runtime package of an exported format is not installed."""


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` claims to be an exported directory (it holds export.json; :func:`read_export_info`
    says whether the claim holds)."""
    return (Path(path) / EXPORT_FILE).is_file()


def runtime_version(fmt: str) -> str:
    """The installed version of ``fmt``'s runtime package ("unknown" when it is not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(RUNTIME_PACKAGES[fmt])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def require_runtime(fmt: str) -> Any:
    """Import and return the runtime module of ``fmt``, or one line naming the package to install."""
    package = RUNTIME_PACKAGES.get(fmt)
    if package is None:
        raise ArtifactError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    module = {"onnx": "onnxruntime", "openvino": "openvino", "aoti": "torch._inductor"}[fmt]
    try:
        import importlib

        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeMissing(
            f"the {fmt} runtime is not installed ({exc}): pip install {package} (or pip install 'ear-stream[export]')"
        ) from None


@dataclass
class ExportInfo:
    """What export.json holds (the fields a runtime outside this package reads are documented in design.md)."""

    format: str
    model_version: str
    #: the model directory's name when exported (``score``'s default product for the exported directory)
    product: str
    image_size: int
    threshold: float
    pixel_threshold: float | None
    precision: str
    files: dict[str, str]
    tolerance: dict[str, float] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = EXPORT_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


def read_export_info(path: str | os.PathLike) -> ExportInfo:
    """export.json of an exported directory, its fields checked (not yet the hashes: :func:`verify_files`)."""
    file = Path(path) / EXPORT_FILE
    if not file.is_file():
        raise ArtifactError(f"{path} is not an exported model (no {EXPORT_FILE})")
    try:
        if file.stat().st_size > MAX_EXPORT_JSON_BYTES:
            raise ArtifactError(f"{file} is over {MAX_EXPORT_JSON_BYTES} bytes: not an export.json")
        data = json.loads(file.read_bytes())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        known = set(ExportInfo.__dataclass_fields__)
        info = ExportInfo(**{k: v for k, v in data.items() if k in known})
    except ArtifactError:
        raise
    except (OSError, TypeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{file} is not a valid export description: {type(exc).__name__}: {exc}") from exc
    if not isinstance(info.format, str) or info.format not in FORMATS:
        raise ArtifactError(f"{file}: unknown format {info.format!r}; known: {', '.join(FORMATS)}")
    if info.format_version != EXPORT_FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: export format version {info.format_version}, this build reads {EXPORT_FORMAT_VERSION}"
        )
    _check_field_types(file, info)
    expected = {*GRAPH_FILES[info.format], MANIFEST_FILE}
    if set(info.files) != expected:
        raise ArtifactError(
            f"{file}: lists {sorted(info.files)}, a {info.format} export is exactly {sorted(expected)} with their hashes"
        )
    return info


#: export.json's fields a loader relies on, and the types they must have
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,), "model_version": (str,), "product": (str,), "image_size": (int,),
    "threshold": (int, float), "pixel_threshold": (int, float, type(None)), "precision": (str,),
    "files": (dict,), "tolerance": (dict,), "input": (dict,), "outputs": (dict,), "versions": (dict,),
    "format_version": (int,),
}  # fmt: skip


def _check_field_types(file: Path, info: ExportInfo) -> None:
    for name, types in _FIELD_TYPES.items():
        value = getattr(info, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ArtifactError(f"{file}: field {name!r} is {type(value).__name__}, not {types[0].__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in info.files.items()):
        raise ArtifactError(f"{file}: files must map plain names to sha256 hex digests")
    import math

    for name in ("threshold", "pixel_threshold"):
        value = getattr(info, name)
        if value is not None and not math.isfinite(value):
            raise ArtifactError(f"{file}: {name} {value} is not a finite number")
    if not 1 <= info.image_size <= MAX_EXPORT_IMAGE_SIZE:
        raise ArtifactError(f"{file}: image_size {info.image_size} is not within 1..{MAX_EXPORT_IMAGE_SIZE}")


def check_against_manifest(path: Path, info: ExportInfo, manifest: Manifest) -> None:
    """export.json cannot hash itself: what it says that decides verdicts (thresholds, image size, version)
    must be what its hashed manifest copy says."""
    said = (info.model_version, info.image_size, info.threshold, info.pixel_threshold)
    held = (manifest.model_version, manifest.config.image_size, manifest.threshold, manifest.pixel_threshold)
    if said != held:
        raise ArtifactError(
            f"{path}: {EXPORT_FILE} says version/size/thresholds {said}, its manifest copy {held}: edited or mixed up"
        )


def verify_files(path: str | os.PathLike, info: ExportInfo) -> None:
    """Every file export.json lists is a regular file (not a link to one elsewhere) with its hash: a replaced
    or truncated graph is refused."""
    import stat

    for name, digest in info.files.items():
        target = Path(path) / name
        try:
            mode = target.lstat().st_mode
        except FileNotFoundError:
            raise ArtifactError(f"{path}: {name} is missing (listed in {EXPORT_FILE})") from None
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{target} is not a regular file (a link or a folder): an export holds its own files")
        if sha256_file(target) != digest:
            raise ArtifactError(f"{target} does not match its hash in {EXPORT_FILE} (corrupt or replaced)")


@dataclass
class ExportedModel:
    """An exported directory, verified: its description, the model's manifest and a runner."""

    path: Path
    info: ExportInfo
    manifest: Manifest
    runner: Runner


def open_exported(path: str | os.PathLike, precision: str = "auto", threads: int | None = None) -> ExportedModel:
    """Verify and load an exported directory for scoring on the CPU.

    ``precision``: OpenVINO's inference precision (``auto``: bf16 where the CPU has bf16 units, as the torch
    path decides; ``fp32``; ``bf16``); the ONNX graph runs as exported (fp32), the AOTI package as compiled.
    """
    path = Path(path)
    info = read_export_info(path)
    verify_files(path, info)
    manifest = load_manifest(path)
    check_against_manifest(path, info, manifest)
    runtime = require_runtime(info.format)
    graph = path / GRAPH_FILES[info.format][0]
    loader = {"onnx": _onnx_runner, "openvino": _openvino_runner, "aoti": _aoti_runner}[info.format]
    try:
        runner = loader(runtime, graph, precision, threads)
    except ArtifactError:
        raise
    except Exception as exc:  # a graph that hashes right but this runtime cannot load (another version wrote it)
        versions = ", ".join(f"{k} {v}" for k, v in info.versions.items())
        raise ArtifactError(
            f"{graph} cannot be loaded by this {info.format} runtime ({type(exc).__name__}: {str(exc).strip()[:300]}); "
            f"it was written with {versions or 'unknown versions'}: export it again here"
        ) from exc
    return ExportedModel(path, info, manifest, runner)


def _as_tensors(outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    score, dmap, recon, ratio = (torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32)) for o in outputs)
    return score, dmap, recon, ratio


def _onnx_runner(ort: Any, graph: Path, precision: str, threads: int | None) -> Runner:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(graph), opts, providers=_onnx_providers(ort))

    def run(images: torch.Tensor):
        return _as_tensors(session.run(None, {"images": images.float().contiguous().numpy()}))

    return run


def _onnx_providers(ort: Any) -> list[str]:
    """The CPU: this build scores exported models on the CPU (``tools/export/onnx_score.py --cuda`` runs the
    same graph on ONNX Runtime's CUDA provider where the onnxruntime build has it)."""
    return ["CPUExecutionProvider"]


def openvino_precision(precision: str) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for a ``--precision`` choice (``auto``: as the torch path decides)."""
    from .precision import cpu_bf16_units

    if precision == "auto":
        return "bf16" if cpu_bf16_units() else "f32"
    if precision in ("fp32", "bf16"):
        return "f32" if precision == "fp32" else "bf16"
    raise ArtifactError(f"precision {precision!r} is not one an OpenVINO model runs with (auto, fp32, bf16)")


def _openvino_runner(ov: Any, graph: Path, precision: str, threads: int | None) -> Runner:
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": openvino_precision(precision), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}  # fmt: skip
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
    request = compiled.create_infer_request()

    def run(images: torch.Tensor):
        result = request.infer({0: images.float().contiguous().numpy()})
        return _as_tensors([result[out] for out in compiled.outputs])

    return run


def _aoti_runner(inductor: Any, graph: Path, precision: str, threads: int | None) -> Runner:
    from .. import model  # noqa: F401  (the package registers torch.ops.ear, which the package may call)
    from . import ops  # noqa: F401

    loaded = inductor.aoti_load_package(str(graph))

    def run(images: torch.Tensor):
        with torch.no_grad():
            return tuple(o.float() for o in loaded(images.float().contiguous()))

    return run
