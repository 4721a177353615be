"""What every consumer of an exported model does before the graph: read export.json, check the files'
hashes, decode images and resize them as export.json says. Standard library, numpy and Pillow only; no
``ear_stream`` import (these scripts are what a line-side box without this package runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

#: what each format's directory holds besides export.json (ear_stream.model.exported.GRAPH_FILES, repeated here
#: because these scripts run without the package)
GRAPH_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin"), "aoti": ("model.pt2",)}


def read_export(export_dir: str | Path) -> dict:
    """export.json, checked as the package checks it: format version 1, exactly the format's files and the
    manifest, each a regular file matching its sha256 (a replaced graph is refused)."""
    export_dir = Path(export_dir)
    info = json.loads((export_dir / "export.json").read_text())
    if not isinstance(info, dict) or info.get("format_version") != 1 or info.get("format") not in GRAPH_FILES:
        raise SystemExit(f"{export_dir}/export.json is not a version 1 export description")
    files = info.get("files")
    expected = {*GRAPH_FILES[info["format"]], "manifest.json"}
    if not isinstance(files, dict) or set(files) != expected:
        raise SystemExit(f"{export_dir}/export.json must list exactly {sorted(expected)} with their hashes")
    for name, digest in files.items():
        path = export_dir / name
        if path.is_symlink() or not path.is_file():
            raise SystemExit(f"{path} is missing or not a regular file")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise SystemExit(f"{path} does not match its hash in export.json (corrupt or replaced)")
    # export.json cannot hash itself: what decides the verdicts must be what the hashed manifest copy says
    manifest = json.loads((export_dir / "manifest.json").read_text())
    said = (info.get("threshold"), info.get("image_size"))
    held = (manifest.get("threshold"), manifest.get("config", {}).get("image_size"))
    if said != held or not isinstance(said[0], (int, float)) or not math.isfinite(said[0]):
        raise SystemExit(f"{export_dir}/export.json says threshold/size {said}, its manifest copy {held}")
    return info


def load_image(path: str | Path, size: int) -> np.ndarray:
    """One image file as float32 [3, size, size], RGB in [0, 1]: 8-bit / 255, then bilinear with antialias
    (Pillow's, in float, per channel), as export.json's ``input.resize`` says."""
    with Image.open(path) as img:
        if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey to [0, 1], as the package scales it
            grey = np.asarray(img, dtype=np.float64)
            scale = 65535.0 if img.mode.startswith("I;16") or grey.max(initial=0) > 255 else 255.0
            grey = np.clip(grey / scale, 0.0, 1.0).astype(np.float32)
            rgb = np.repeat(grey[..., None], 3, axis=-1)
        else:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if rgb.shape[:2] != (size, size):
        channels = [Image.fromarray(rgb[..., c], mode="F").resize((size, size), Image.BILINEAR) for c in range(3)]
        rgb = np.stack([np.asarray(ch, dtype=np.float32) for ch in channels], axis=-1)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1).clip(0.0, 1.0))


def load_batch(paths: list[str], size: int) -> np.ndarray:
    return np.stack([load_image(p, size) for p in paths]) if paths else np.zeros((0, 3, size, size), np.float32)


def print_scores(paths: list[str], scores: np.ndarray, threshold: float) -> None:
    """One line per image: score, verdict, path (tab-separated; the verdict is score > threshold)."""
    for path, score in zip(paths, scores, strict=True):
        verdict = "anomaly" if float(score) > threshold else "ok"
        print(f"{float(score):.6f}\t{verdict}\t{path}")


def consumer_args(doc: str, fmt: str, more: Callable[[argparse.ArgumentParser], None] | None = None):
    """A consumer's command line (EXPORT_DIR IMAGE... --batch N, plus ``more``'s options) and its export.json,
    checked (hashes, and that it holds a ``fmt`` export)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--batch", type=int, default=16)
    if more is not None:
        more(parser)
    args = parser.parse_args()
    info = read_export(args.export_dir)
    if info["format"] != fmt:
        raise SystemExit(f"{args.export_dir} holds a {info['format']} export, not {fmt}")
    return args, info


def batches(paths: list[str], batch: int, size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The images in batches of ``batch``: (paths, float32 [n, 3, size, size])."""
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        yield chunk, load_batch(chunk, size)
