"""Model artifact: a directory with ``weights.safetensors`` and ``manifest.json``.

Loading never unpickles: weights are safetensors, everything else is JSON.
The weights file is one module's ``state_dict`` (:class:`~.container.ProductModel`:
U-Net, fitted saliency, head, normal map; :mod:`.factory` rebuilds it). The manifest carries the config, the mosaic scale, the decision threshold with
its calibration statistics, library versions and SHA-256 hashes, so a result
row's ``model_version`` identifies exactly which weights produced it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import EarStreamError
from .config import DEFAULT_IMAGE_POLICY, DEFAULT_PIXEL_POLICY, ModelConfig
from .unet import UNet

WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
#: a manifest is a few hundred KiB at most (calibration scores, pixel quantiles, history); anything larger
#: is not read (a 1 GB file would be read whole into memory by every worker that reloads it)
MAX_MANIFEST_BYTES = 16 << 20


class ArtifactError(EarStreamError, ValueError):
    """A model directory is missing, incomplete or corrupt."""


@dataclass
class Manifest:
    """What ``manifest.json`` holds: these fields (``dataclasses.asdict``) and the derived ``model_version``."""

    config: ModelConfig
    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    dino_weights_sha256: str | None = None
    weights_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    #: the named policies the thresholds came from (``ear_stream.inspect.thresholds``)
    threshold_policy: str = DEFAULT_IMAGE_POLICY
    #: MSGMS value above which a map pixel belongs to a defect region (None: the image threshold)
    pixel_threshold: float | None = None
    pixel_policy: str = DEFAULT_PIXEL_POLICY
    #: how often ``ear-stream threshold`` revised the thresholds, and what they were before
    threshold_revision: int = 0
    threshold_history: list[dict[str, Any]] = field(default_factory=list)
    #: a refined model's origin (``ear-stream refine``): parent version, label-set hash and counts, the held-out
    #: comparison ``promote`` decides on; empty for a model trained from scratch
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def scoring_hash(self) -> str:
        """Short hash of everything besides the weights that changes a score: the config (size, saliency,
        mosaic scale, scoring, head) and the DINO weights it was trained with."""
        identity = json.dumps([self.config.to_dict(), self.dino_weights_sha256], sort_keys=True, default=str)
        return hashlib.sha256(identity.encode()).hexdigest()[:6]

    @property
    def model_version(self) -> str:
        """``<weights hash>-<scoring hash>``, plus ``.t<n>`` after the n-th threshold revision.

        Two rows with the same version before ``.t`` have comparable scores (same weights, same config); a
        config edited with the weights kept is a new version, and workers reload it as a new model.
        """
        base = f"{self.weights_sha256[:12]}-{self.scoring_hash}"
        return base if not self.threshold_revision else f"{base}.t{self.threshold_revision}"

    def to_json(self) -> dict[str, Any]:
        """Every field, plus ``model_version``; the two version keys first, where a reader of the file looks."""
        fields = dataclasses.asdict(self)
        return {"format_version": fields.pop("format_version"), "model_version": self.model_version, **fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The fields a manifest holds, each read as its declared type; keys that are no field (the derived
        ``model_version``) are skipped, absent ones take their default, or what an older manifest without
        them meant (:data:`_LEGACY_DEFAULTS`). Raises (KeyError, TypeError, ValueError) on anything else."""
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object is expected, got {type(data).__name__}")
        hints = _field_types()
        values = {**_LEGACY_DEFAULTS, **{k: v for k, v in data.items() if k in hints}}
        return cls(**{k: _coerce(hints[k], v, k) for k, v in values.items()})


#: the image policy of manifests written before the policy was recorded (they were all mean + 3·std)
LEGACY_IMAGE_POLICY = "sigma:3"
#: what a manifest written before a field existed meant by its absence, where that differs from the default
#: of a new one
_LEGACY_DEFAULTS: dict[str, Any] = {"threshold_policy": LEGACY_IMAGE_POLICY}


@functools.cache
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Manifest)
    return {f.name: hints[f.name] for f in dataclasses.fields(Manifest)}


def _coerce(hint: Any, value: Any, name: str = "") -> Any:
    """``value`` as the field's type says: a config from its dict, numbers and strings converted, None kept
    where the type allows it, a missing list empty, dicts as they are."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    kind = typing.get_origin(hint) or hint
    if kind is ModelConfig:
        return ModelConfig.from_dict(value)
    if kind is list:
        return list(value or [])
    if kind in (float, int, str):
        if value is None:  # not "None": a null hash or threshold is a broken manifest, said as such
            raise TypeError(f"{name or 'a field'} is null (a {kind.__name__} is expected)")
        return kind(value)
    return value


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import timm

    from .. import __version__

    return {"ear_stream": __version__, "torch": torch.__version__, "timm": timm.__version__}


def build_unet(cfg: ModelConfig) -> UNet:
    """The U-Net a config describes (fresh weights)."""
    return UNet(base_channels=cfg.base_channels, kernel_size=cfg.kernel_size)


def save_artifact(model_dir: str | Path, model: nn.Module, manifest: Manifest) -> Path:
    """Write weights then manifest (manifest last: its presence marks a complete artifact).

    The weights file is ``model.state_dict()``: a :class:`~.container.ProductModel` with every part, or a
    bare U-Net for a model that has no other (the same keys either way), so ``model_version`` covers them all.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    manifest.weights_sha256 = sha256_file(weights)
    manifest.versions = _versions()
    manifest.created_at = datetime.now(timezone.utc).isoformat()
    write_manifest(model_dir, manifest)
    return model_dir


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    """Replace manifest.json atomically: temporary name, fsync, rename (a reader sees old or new, never half)."""
    path = Path(model_dir) / MANIFEST_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest.to_json(), indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_manifest(model_dir: str | Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{model_dir} is not a model directory (no {MANIFEST_FILE})")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path} is {size} bytes, over the {MAX_MANIFEST_BYTES} a manifest may have")
        with open(path, "rb") as f:
            manifest = Manifest.from_dict(json.loads(f.read(MAX_MANIFEST_BYTES + 1)))
    except ArtifactError:
        raise
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, MemoryError) as exc:
        # RecursionError: json nests as deep as the file does; a hostile manifest is refused, not a crash
        raise ArtifactError(f"{path} is not a valid manifest: {type(exc).__name__}: {exc}") from exc
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Manifest, path: Path) -> None:
    """Refuse values no model was trained with: a threshold that is not a number fails open (NaN passes every
    image), a missing weights hash skips the integrity check, an absurd width exhausts memory."""
    finite = [("threshold", manifest.threshold)]
    if manifest.pixel_threshold is not None:
        finite.append(("pixel_threshold", manifest.pixel_threshold))
    for name, value in finite:
        if not math.isfinite(value):
            raise ArtifactError(f"{path}: {name} is {value}, not a finite number (thresholds must never fail open)")
    if not manifest.weights_sha256 or len(manifest.weights_sha256) != 64:
        raise ArtifactError(f"{path}: no valid weights_sha256 (the weights cannot be verified)")
    for name, value, low, high in (
        ("base_channels", manifest.config.base_channels, 4, 256),
        ("image_size", manifest.config.image_size, 32, 4096),
        ("mosaic_scale", manifest.config.mosaic_scale, 1, 1024),
    ):
        if not low <= int(value) <= high:
            raise ArtifactError(f"{path}: {name} {value} is outside [{low}, {high}]")


def read_weights(model_dir: str | Path, manifest: Manifest, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of ``weights.safetensors`` by key, checked against the manifest's hash when ``verify``."""
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{model_dir} has no {WEIGHTS_FILE}")
    if verify and manifest.weights_sha256 and sha256_file(weights) != manifest.weights_sha256:
        raise ArtifactError(f"{weights} does not match the hash in its manifest (corrupt or replaced)")
    return load_file(str(weights))


def load_artifact(model_dir: str | Path, verify: bool = True) -> tuple[UNet, Manifest]:
    """The U-Net alone and the manifest (checks the weights hash when ``verify``); the other parts are left
    in the file (:func:`ear_stream.model.factory.load_model` loads them all)."""
    manifest = load_manifest(model_dir)
    state = read_weights(model_dir, manifest, verify)
    unet = build_unet(manifest.config)
    try:
        missing = unet.load_state_dict(state, strict=False).missing_keys
    except RuntimeError as exc:  # a stored tensor of another shape
        raise ArtifactError(f"{model_dir}: the stored U-Net does not fit its manifest: {exc}") from exc
    if missing:
        raise ArtifactError(f"{model_dir}: the stored U-Net does not fit its manifest: missing {missing[:5]}")
    return unet.eval(), manifest
