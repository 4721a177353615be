"""The whole scoring function per runtime, side by side in one run: images/s of torch eager, torch with a
compiled U-Net, ONNX Runtime, OpenVINO (fp32 and its bf16 hint) and the AOTInductor package (fp32, bf16).

Each runtime scores the same preprocessed batch (saliency → excise/mosaic → U-Net → MSGMS → head → score and
map; decoding and writing are ``benchmarks/score_stages.py``'s business) at batch 1 and 32, at the model's
size and at a larger one (``--sizes``: the model's config with another ``image_size`` — every part is
convolutional or size-free, so a 128-px model runs at 256 px with the same weights), with 1 thread and with
every core. Cells are interleaved over ``--repeat`` rounds and the median is quoted; the last column of each
row is its ratio against torch eager fp32 in the same (size, batch, threads) cell.

    python benchmarks/export_speed.py --model models/magnetic_tile --sizes 128,256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ear_stream.export.writer import export_model, parity_images
from ear_stream.inspect.pipeline import Pipeline

#: name → (kind, precision): kind "torch", "compiled" or an export format
RUNTIMES: dict[str, tuple[str, str]] = {
    "torch fp32": ("torch", "fp32"),
    "torch bf16": ("torch", "bf16"),
    "compiled fp32": ("compiled", "fp32"),
    "compiled bf16": ("compiled", "bf16"),
    "onnxruntime fp32": ("onnx", "fp32"),
    "openvino fp32": ("openvino", "fp32"),
    "openvino bf16": ("openvino", "bf16"),
    "aoti fp32": ("aoti", "fp32"),
    "aoti bf16": ("aoti", "bf16"),
}


def at_size(model: Path, size: int, root: Path) -> Path:
    """The model directory with its config's image size changed (a copy; the weights are the same)."""
    manifest = json.loads((model / "manifest.json").read_text())
    if manifest["config"]["image_size"] == size:
        return model
    if manifest["config"].get("scoring", {}).get("normal_map"):
        raise SystemExit(f"{model} subtracts a normal map of its own size: benchmark it at that size only")
    dst = root / f"{model.name}-{size}px"
    shutil.copytree(model, dst)
    manifest["config"]["image_size"] = size
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def load(kind: str, precision: str, model: Path, exports: dict[tuple[str, str], Path]) -> Pipeline:
    if kind in ("torch", "compiled"):
        pipe = Pipeline.from_artifact(model, device="cpu", precision=precision, compile=kind == "compiled")
        if kind == "compiled":
            pipe.warm_up((1, 32))
        return pipe
    return Pipeline.from_artifact(exports[(kind, precision)], device="cpu", precision=precision)


def images_per_second(score: Callable[[torch.Tensor], object], images: torch.Tensor, min_seconds: float) -> float:
    """Batches scored back to back for at least ``min_seconds`` (after one warm-up batch)."""
    score(images)
    n, started = 0, time.perf_counter()
    while True:
        score(images)
        n += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return n * images.shape[0] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",")))
    names = [n.strip() for n in args.runtimes.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; median images/s of {args.repeat} rounds, "
          f"ratio against {names[0]}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            model = at_size(args.model, size, Path(tmp))
            exports: dict[tuple[str, str], Path] = {}
            for name in names:
                kind, precision = RUNTIMES[name]
                if kind not in ("torch", "compiled") and (kind, precision) not in exports:
                    out = Path(tmp) / f"{size}-{kind}-{precision}"
                    export_model(model, kind, out, "fp32" if kind == "openvino" else precision)
                    exports[(kind, precision)] = out
            for t in threads:
                torch.set_num_threads(t)
                pipes = {name: load(*RUNTIMES[name], model, exports) for name in names}
                rates: dict[tuple[str, int], list[float]] = {}
                for _ in range(args.repeat):
                    for b in batches:
                        images = parity_images(size, b, seed=b)
                        for name, pipe in pipes.items():
                            rate = images_per_second(pipe.score_tensor, images, args.min_seconds)
                            rates.setdefault((name, b), []).append(rate)
                print(f"\n{size} px, {t} thread(s)")
                print(f"{'runtime':<18}" + "".join(f"{'batch ' + str(b):>12}{'×':>7}" for b in batches))
                for name in names:
                    cells = ""
                    for b in batches:
                        rate, base = statistics.median(rates[(name, b)]), statistics.median(rates[(names[0], b)])
                        cells += f"{rate:>12.1f}{rate / base:>6.2f}×"
                    print(f"{name:<18}{cells}", flush=True)
                del pipes


if __name__ == "__main__":
    main()
