"""A results tree and an images folder written to attack the review station (its guard and browser tests).

No model: the rows are written as a worker would write them, with strings a hostile producer or results part
could hold, and a non-square image whose one region is known exactly.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from ear_stream.io.results import ResultWriter

PRODUCT = "tiles"
#: a model_version as a results part could hold it: markup and script, never to run in the page
EVIL_VERSION = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
EVIL_CHECK = '<img src=x onerror="window.__pwned = 3">'
#: the non-square image (every Magnetic Tile image is one) and its single defect, in its own pixels
WIDE = "wide.png"
WIDE_SIZE = (480, 120)  # width, height
BOX = {"x0": 300, "y0": 40, "x1": 339, "y1": 79}
#: files under --images that must never be served: active content, and HTML named like an image
NOT_IMAGES = {
    "evil.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>',
    "page.html": b"<!doctype html><script>alert(document.cookie)</script>",
    "fake.png": b"<html><script>alert(1)</script></html>",
}


def write_wide_image(path: Path) -> None:
    """A gray non-square image with one bright defect exactly inside :data:`BOX`."""
    width, height = WIDE_SIZE
    pixels = np.full((height, width), 90, dtype=np.uint8)
    pixels[BOX["y0"] : BOX["y1"] + 1, BOX["x0"] : BOX["x1"] + 1] = 250
    Image.fromarray(pixels).save(path)


def row(ident: str, score: float, **extra) -> dict:  # type: ignore[no-untyped-def]
    """One result row as a worker writes it."""
    now = datetime.now(timezone.utc)
    return {
        "id": ident,
        "stream_id": "1-0",
        "product": PRODUCT,
        "score": score,
        "normalized_score": score,
        "is_anomaly": score > 0.5,
        "threshold": 0.5,
        "mask_ratio": 0.0,
        "mosaic_scale": 1,
        "model_version": EVIL_VERSION,
        "worker": "w1",
        "enqueued_at": now,
        "processed_at": now,
        "latency_ms": 1.0,
        "meta": json.dumps({"note": "<b>meta</b>"}),
        "heatmap": None,
        "n_regions": 0,
        "regions": [],
        "frame_check": None,
        **extra,
    }


def write_hostile_line(root: Path) -> dict[str, Path]:
    """``root/results`` (rows for the wide image and each file that must not be served) and ``root/images``."""
    images = root / "images"
    images.mkdir(parents=True)
    write_wide_image(images / WIDE)
    for name, content in NOT_IMAGES.items():
        (images / name).write_bytes(content)
    region = {**BOX, "area": 1600, "peak": 1.0, "mean": 0.8}
    rows = [row(WIDE, 0.99, n_regions=1, regions=[region], frame_check=EVIL_CHECK)]
    rows += [row(name, 0.9 - 0.1 * i) for i, name in enumerate(NOT_IMAGES)]
    rows.append(row(str(images / "evil.svg"), 0.6))  # an id that is a path under --images
    results = root / "results"
    ResultWriter(results, "w1").write(rows)
    return {"results": results, "images": images, "labels": root / "results-labels"}
