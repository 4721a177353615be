"""Image decoding and preprocessing (SPEC §1: any size, 8/16-bit, gray/RGB/RGBA).

Bad input raises :class:`ImageDecodeError` whose ``reason`` is one of the
dead-letter reasons of SPEC §3 (``decode_error``, ``too_large``), so the CLI
and the stream workers report the same thing for the same bytes.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .limits import DEFAULT_MAX_PIXELS

#: Default pixel limit: rejects decompression bombs before any pixel is decoded.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow's own bomb check raises its own error type; we check the size ourselves.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """An image could not be turned into pixels; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded PNG/JPEG/BMP/TIFF bytes → float32 RGB array [H, W, 3] in [0, 1]."""
    if not data:
        raise ImageDecodeError("decode_error", "empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageDecodeError("decode_error", f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageDecodeError("too_large", f"image is {w}x{h} = {w * h} pixels, limit is {max_pixels}")
            img.load()
            return _to_rgb_float(img)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise ImageDecodeError("decode_error", f"cannot decode image: {exc}") from exc


def _to_rgb_float(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageDecodeError("decode_error", "floating-point images have no defined range")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # alpha is dropped, colours kept
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file; errors name the file."""
    path = Path(path)
    try:
        return decode_image(path.read_bytes(), max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(exc.reason, f"{path}: {exc}") from exc


def _resampled(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """One [H, W, 3] array as [1, 3, h, w] in [0, 1], resized (bilinear, antialias) when the size differs."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t.clamp_(0.0, 1.0)


def to_model_input(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Resize each [H, W, 3] array to size×size (bilinear, antialias) and stack: [B, 3, S, S]."""
    if not images:
        return torch.zeros((0, 3, size, size))
    return torch.cat([_resampled(arr, (size, size)) for arr in images])


def to_native_input(images: list[np.ndarray], scale: float) -> list[torch.Tensor]:
    """Each [H, W, 3] array as a [3, h, w] tensor resampled by ``scale`` (aspect kept; 1.0 = untouched)."""
    sizes = [(max(1, int(round(a.shape[0] * scale))), max(1, int(round(a.shape[1] * scale)))) for a in images]
    return [_resampled(arr, size)[0] for arr, size in zip(images, sizes, strict=True)]


def list_images(inputs: list[str]) -> list[Path]:
    """Expand files, folders (recursively) and globs to a sorted, de-duplicated list of images."""
    import glob

    found: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.update(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            found.add(p)
        else:
            matches = [Path(m) for m in glob.glob(item, recursive=True)]
            if not matches:
                raise FileNotFoundError(f"no such file, folder or glob match: {item}")
            found.update(m for m in matches if m.is_file())
    return sorted(found)
