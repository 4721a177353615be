"""Decoding: every supported format/depth, and clear errors for bad bytes (docs/design.md, "Decoding" and the dead-letter reasons)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ear_stream.io.decode import ImageDecodeError, as_float, decode_image, list_images, to_model_input


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_formats_decode_to_rgb_unit_range(fmt):
    rgb = Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    arr = decode_image(_encode(rgb, fmt))
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8  # uint8 until the resize: a quarter of float32
    unit = as_float(arr)
    assert unit.dtype == np.float32 and unit.min() >= 0.0 and unit.max() <= 1.0


def test_gray_16bit_and_rgba():
    gray16 = Image.fromarray(np.full((8, 9), 65535, dtype=np.uint16))
    arr = decode_image(_encode(gray16, "PNG"))
    assert arr.shape == (8, 9, 3) and np.allclose(arr, 1.0)
    rgba = Image.new("RGBA", (5, 4), (255, 0, 0, 10))
    arr = decode_image(_encode(rgba, "PNG"))
    assert arr.shape == (4, 5, 3) and np.allclose(as_float(arr)[..., 0], 1.0)
    cmyk = Image.new("CMYK", (6, 6), (0, 0, 0, 0))
    assert decode_image(_encode(cmyk, "JPEG")).shape == (6, 6, 3)


def test_truncated_corrupt_and_empty_inputs_raise_decode_error():
    png = _encode(Image.new("RGB", (64, 64), (10, 20, 30)), "PNG")
    for bad in (png[: len(png) // 2], b"\x89PNG garbage", b""):
        with pytest.raises(ImageDecodeError) as err:
            decode_image(bad)
        assert err.value.reason == "decode_error"
    with pytest.raises(ImageDecodeError) as err:  # bytes of no accepted format at all
        decode_image(np.random.default_rng(1).bytes(500))
    assert err.value.reason == "unsupported_format"


def test_pixel_limit_rejects_before_decoding():
    big = _encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(ImageDecodeError) as err:
        decode_image(big, max_pixels=10_000)
    assert err.value.reason == "too_large" and "limit" in str(err.value)


def test_resize_to_model_input():
    t = to_model_input([np.zeros((100, 37, 3), np.float32), np.ones((20, 20, 3), np.float32)], 32)
    assert t.shape == (2, 3, 32, 32)
    assert to_model_input([], 32).shape == (0, 3, 32, 32)


def test_list_images_expands_folders_and_globs(tmp_path):
    for name in ("a.png", "b.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([str(tmp_path)])] == ["a.png", "b.jpg"]
    assert [p.name for p in list_images([str(tmp_path / "*.jpg")])] == ["b.jpg"]
    with pytest.raises(FileNotFoundError):
        list_images([str(tmp_path / "missing*.png")])
