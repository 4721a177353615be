"""Model artifact: a directory with ``weights.safetensors`` and ``manifest.json``.

Loading never unpickles: weights are safetensors, everything else is JSON.
The manifest carries the config, the mosaic scale, the decision threshold with
its calibration statistics, library versions and SHA-256 hashes, so a result
row's ``model_version`` identifies exactly which weights produced it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import EarStreamError
from .config import DEFAULT_IMAGE_POLICY, ModelConfig
from .head import HEAD_PREFIX
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
    pixel_policy: str = "image"
    #: how often ``ear-stream threshold`` revised the thresholds, and what they were before
    threshold_revision: int = 0
    threshold_history: list[dict[str, Any]] = field(default_factory=list)

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
        return {
            "format_version": self.format_version,
            "model_version": self.model_version,
            "config": self.config.to_dict(),
            "threshold": self.threshold,
            "calibration": self.calibration,
            "training": self.training,
            "dino_weights_sha256": self.dino_weights_sha256,
            "weights_sha256": self.weights_sha256,
            "versions": self.versions,
            "created_at": self.created_at,
            "threshold_policy": self.threshold_policy,
            "pixel_threshold": self.pixel_threshold,
            "pixel_policy": self.pixel_policy,
            "threshold_revision": self.threshold_revision,
            "threshold_history": self.threshold_history,
        }


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


#: prefixes of the tensors stored beside the U-Net weights (hashed with them): fitted saliency
#: statistics (``saliency.*``), the scoring's per-pixel normal map (``scoring.normal_map``) and the
#: learned anomaly head (``anomaly_head.*``)
EXTRA_PREFIXES = ("saliency.", "scoring.", HEAD_PREFIX)


def build_unet(cfg: ModelConfig) -> UNet:
    """The U-Net a config describes (fresh weights)."""
    return UNet(base_channels=cfg.base_channels, kernel_size=cfg.kernel_size)


def save_artifact(
    model_dir: str | Path, unet: UNet, manifest: Manifest, extras: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write weights then manifest (manifest last: its presence marks a complete artifact).

    ``extras`` (keys starting with one of :data:`EXTRA_PREFIXES`: fitted saliency statistics, the
    normal map) go into the same safetensors file, so ``model_version`` covers them.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    for key, value in (extras or {}).items():
        if not key.startswith(EXTRA_PREFIXES):
            raise ValueError(f"extra tensor {key!r} must start with one of {EXTRA_PREFIXES}")
        state[key] = value.detach().cpu().contiguous()
    save_file(state, str(weights))
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
            data = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object is expected, got {type(data).__name__}")
        manifest = Manifest(
            config=ModelConfig.from_dict(data["config"]),
            threshold=float(data["threshold"]),
            calibration=data.get("calibration", {}),
            training=data.get("training", {}),
            dino_weights_sha256=data.get("dino_weights_sha256"),
            weights_sha256=data.get("weights_sha256", ""),
            versions=data.get("versions", {}),
            created_at=data.get("created_at", ""),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            threshold_policy=str(data.get("threshold_policy", "sigma:3")),
            pixel_threshold=None if data.get("pixel_threshold") is None else float(data["pixel_threshold"]),
            pixel_policy=str(data.get("pixel_policy", "image")),
            threshold_revision=int(data.get("threshold_revision", 0)),
            threshold_history=list(data.get("threshold_history") or []),
        )
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


def load_artifact(model_dir: str | Path, verify: bool = True) -> tuple[UNet, Manifest]:
    """Rebuild the U-Net from a model directory; checks the weights hash when ``verify``."""
    unet, manifest, _ = load_artifact_parts(model_dir, verify)
    return unet, manifest


def load_artifact_parts(model_dir: str | Path, verify: bool = True) -> tuple[UNet, Manifest, dict[str, torch.Tensor]]:
    """U-Net, manifest and the extra tensors by full key (``saliency.*``, ``scoring.*``; ``{}`` when none)."""
    manifest = load_manifest(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{model_dir} has no {WEIGHTS_FILE}")
    if verify and manifest.weights_sha256 and sha256_file(weights) != manifest.weights_sha256:
        raise ArtifactError(f"{weights} does not match the hash in its manifest (corrupt or replaced)")
    state = load_file(str(weights))
    extras = {k: state.pop(k) for k in list(state) if k.startswith(EXTRA_PREFIXES)}
    unet = build_unet(manifest.config)
    try:
        unet.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{weights} does not fit the U-Net its manifest describes: {exc}") from exc
    return unet.eval(), manifest, extras
