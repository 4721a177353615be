"""What the pipeline is fed: image batches loaded the way a model inspects them, and the device it runs on.

Owns the two shapes an image batch takes (:data:`Images`), selecting from either, loading image files
for a model (resized, or resampled at native resolution), and resolving ``--device`` without a silent
fallback.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SetupError
from ..model.config import ModelConfig

#: an image batch: one [B, 3, S, S] tensor (whole-image models) or a list of [3, H, W] (native resolution)
Images = torch.Tensor | list[torch.Tensor]


class DeviceUnavailable(SetupError):
    """The device asked for is not there (no silent fallback: a plant sized for a GPU must know)."""


def select(images: Images, idx) -> Images:
    """``images[idx]`` for a tensor batch or a list of native-resolution images alike."""
    if isinstance(images, list):
        return [images[int(i)] for i in idx]
    return images[list(idx)] if not isinstance(idx, slice) else images[idx]


def image_sizes(arrays: list[np.ndarray]) -> list[tuple[int, int]]:
    """(height, width) of decoded [H, W, C] arrays: the frame region boxes are reported in."""
    return [(int(a.shape[0]), int(a.shape[1])) for a in arrays]


def load_images(config: ModelConfig, paths: list, desc: str = "loading", progress: bool = True) -> Images:
    """Image files loaded the way a model inspects them: resized to image_size², or resampled by ``scale``."""
    from ..io.datasets import load_native, load_tensor

    if config.native:
        return load_native(paths, config.native_scale, desc=desc, progress=progress)
    return load_tensor(paths, config.image_size, desc=desc, progress=progress)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"--device {device} was asked for but no CUDA device is available here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev
