"""``--runtime onnx|openvino|aoti``: score a trained model through an exported graph, exported on first use.

The export is cached per model version, format, precision and the versions of ear_stream, torch and the
runtime that wrote it (:func:`cache_key`) under the user's cache folder
(``$EAR_STREAM_EXPORT_CACHE``, default ``~/.cache/ear-stream/exports``), so a worker restarting, a second
worker on the host, or a product reloaded after a threshold revision (same weights) reuse it; new weights are
a new version and a new export. One export at a time per entry (a lock file): concurrent workers wait
rather than race. The cached directory is verified (hashes) every time it is opened, like any export; one that
fails is exported again, once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from ..inspect.pipeline import Pipeline
from ..model.artifact import ArtifactError, load_manifest
from ..model.exported import EXPORT_FILE, FORMATS, RUNTIME_CHOICES, RuntimeMissing, is_export_dir, runtime_version
from .graph import ExportError
from .writer import export_model

CACHE_ENV = "EAR_STREAM_EXPORT_CACHE"
log = logging.getLogger("ear_stream.export.live")


def cache_root() -> Path:
    chosen = os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "ear-stream" / "exports"


def runtime_pipeline(
    model_dir: str | os.PathLike,
    runtime: str,
    device: str = "auto",
    dino_weights: str | os.PathLike | None = None,
    threshold: float | None = None,
    precision: str = "auto",
) -> Pipeline:
    """The model at ``model_dir`` scored by ``runtime`` (exported into the cache first when needed); its
    thresholds are the model's own (a revision after the export is taken, not the export's copy)."""
    if runtime not in RUNTIME_CHOICES:
        raise ExportError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    if runtime == "torch":
        return Pipeline.from_artifact(model_dir, device, dino_weights, threshold=threshold, precision=precision)
    assert runtime in FORMATS
    if is_export_dir(model_dir):
        raise ExportError(f"{model_dir} is an exported model: score it with --model {model_dir} and no --runtime")
    if device not in ("auto", "cpu"):
        raise ExportError(f"--runtime {runtime} runs on the CPU in this build (--device cpu or auto)")
    manifest = load_manifest(model_dir)
    entry = cache_root() / cache_key(manifest.model_version, runtime, precision)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits for the first one's export
        fresh = not (entry / EXPORT_FILE).is_file()
        if fresh:
            export_model(model_dir, runtime, entry, precision, dino_weights, force=True)
        try:
            pipe = Pipeline.from_export(entry, device, threshold, precision)
        except RuntimeMissing:
            raise
        except ArtifactError as exc:  # a cached entry damaged on disk: exported again, once
            if fresh:
                raise
            log.warning("the cached export %s cannot be used (%s): exporting it again", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            export_model(model_dir, runtime, entry, precision, dino_weights)
            pipe = Pipeline.from_export(entry, device, threshold, precision)
    pipe.apply_thresholds(manifest, threshold)  # the model's current thresholds, not the copy's
    return pipe


def cache_key(model_version: str, runtime: str, precision: str) -> str:
    """One cache entry per weights-and-config version (a threshold revision, ``.t<n>``, reuses the graph),
    format, precision as built (``auto`` resolved here), and the machine and versions that wrote it (an
    upgraded torch, runtime or ear_stream, or a cache shared with a host of another kind, exports anew)."""
    import hashlib
    import platform

    import torch

    from .. import __version__
    from ..model.precision import cpu_capability
    from .writer import export_precision

    built = export_precision(runtime, precision)
    stamp = "|".join((__version__, torch.__version__, runtime_version(runtime), platform.machine(), cpu_capability()))
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:8]
    return f"{model_version.split('.t')[0]}-{runtime}-{built}-{digest}"
