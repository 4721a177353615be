"""Image decoding and preprocessing (docs/design.md, "Decoding": any size, 8/16-bit, gray/RGB/RGBA).

Bad input raises :class:`ImageDecodeError` whose ``reason`` is one of the
dead-letter reasons of docs/design.md (``decode_error``, ``too_large``), so the CLI
and the stream workers report the same thing for the same bytes.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, EarStreamError, Reason
from .limits import DEFAULT_MAX_PIXELS, FRAME_MAX_ASPECT, FRAME_MIN_STD

#: Default pixel limit: rejects decompression bombs before any pixel is decoded.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow's own bomb check raises its own error type; we check the size ourselves.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(EarStreamError, ValueError):
    """An image could not be turned into pixels; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: the only formats opened from a stream or a file: Pillow's other plugins are never reached (GIF animations,
#: EPS would start Ghostscript)
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
#: leading bytes of those formats: a payload that starts like one but fails is corrupt, else unsupported
_SIGNATURES = (b"\x89PNG", b"\xff\xd8", b"BM", b"II*", b"MM\x00*")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded PNG/JPEG/BMP/TIFF bytes → RGB array [H, W, 3] at full size (see :func:`decode_frame`)."""
    return decode_frame(data, max_pixels)[0]


def decode_frame(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, target: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded PNG/JPEG/BMP/TIFF bytes → (RGB array [H, W, 3], the image's own (height, width)).

    The array is uint8 for 8-bit images (a quarter of float32's memory until the resize), float32 in
    [0, 1] for 16-bit ones.

    ``target``: the side a whole-image model resizes to. A JPEG then decodes at a reduced DCT scale and any
    image at least 8× larger is box-reduced first, both staying at least 4× the target, so a 6000² frame
    never exists as full-size pixels (docs/design.md, "Decoding").
    """
    if not data:
        raise ImageDecodeError("decode_error", "empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            except UnidentifiedImageError:
                if data.startswith(_SIGNATURES):
                    raise
                raise ImageDecodeError(
                    "unsupported_format", f"not a {', '.join(ALLOWED_FORMATS)} image (first bytes {data[:8]!r})"
                ) from None
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageDecodeError("decode_error", f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageDecodeError("too_large", f"image is {w}x{h} = {w * h} pixels, limit is {max_pixels}")
            if target and img.format == "JPEG" and min(w, h) >= 8 * target:
                img.draft("RGB", (4 * target * w // min(w, h), 4 * target * h // min(w, h)))
            img.load()
            factor = min(img.size) // (4 * target) if target else 1
            if factor >= 2 and img.mode in ("RGB", "L", "RGBA", "LA", "P"):
                img = (img.convert("RGB") if img.mode == "P" else img).reduce(factor)
            return _to_rgb(img), (h, w)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError("decode_error", f"cannot decode image: {exc}") from exc


def _to_rgb(img: Image.Image) -> np.ndarray:
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
    return np.array(img, dtype=np.uint8)  # writable (torch.from_numpy warns on read-only buffers)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the image header without decoding a pixel; None when the header is unreadable
    (decoding then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, h = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).size
        return h, w
    except Exception:  # noqa: BLE001 - any unreadable header: decode_frame reports the reason
        return None


def frame_issue(arr: np.ndarray, min_std: float = FRAME_MIN_STD, max_aspect: float = FRAME_MAX_ASPECT) -> str | None:
    """Why a decoded frame cannot be a photo of a part (None when it can): near-constant, or absurdly thin.

    A camera fault (lens cap, dead sensor, torn read) must not pass inspection as a good part. ``min_std``
    or ``max_aspect`` ≤ 0 turns that check off.
    """
    h, w = arr.shape[:2]
    if max_aspect > 0 and max(h, w) > max_aspect * min(h, w):
        return f"{Reason.INVALID_FRAME}: aspect ratio {max(h, w) / min(h, w):.0f}:1 (> {max_aspect:g}:1)"
    if min_std > 0:
        step = max(1, int(np.sqrt(h * w / 65536)))  # a strided sample is plenty for a standard deviation
        gray = as_float(arr[::step, ::step]).mean(axis=2)
        std = float(gray.std())
        if std < min_std:
            return f"{Reason.INVALID_FRAME}: near-constant (grey std {std:.4f} < {min_std:g}, mean {float(gray.mean()):.3f})"
    return None


def as_float(arr: np.ndarray) -> np.ndarray:
    """A decoded array in [0, 1] as float32 (uint8 is divided by 255; float arrays pass through)."""
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32, copy=False)


def read_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, target: int | None = None) -> np.ndarray:
    """Decode an image file (reduced towards ``target`` like :func:`decode_frame`); errors name the file."""
    return read_frame(path, max_pixels, target)[0]


def read_frame(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, target: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode_frame` of a file; errors name the file."""
    path = Path(path)
    try:
        return decode_frame(path.read_bytes(), max_pixels, target)
    except ImageDecodeError as exc:
        raise ImageDecodeError(exc.reason, f"{path}: {exc}") from exc


def _resampled(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """One [H, W, 3] array as [1, 3, h, w] in [0, 1], resized (bilinear, antialias) when the size differs."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()
    if arr.dtype == np.uint8:
        t = t.div_(255.0)
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
                raise DataError(f"no such file, folder or glob match: {item}")
            found.update(m for m in matches if m.is_file())
    return sorted(found)
