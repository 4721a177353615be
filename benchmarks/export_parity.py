"""Exported models against the torch pipeline on real images: scores, verdicts and maps, per format and path.

Every image is decoded and resized once (``Pipeline.prepare``: what ``ear-stream score`` feeds the model),
then scored by the torch pipeline and by each export on the same tensors, batch by batch. For each export:
the max and median relative score difference, the verdicts that differ at the model's threshold, how many
of those lie inside the tolerance band (|score − threshold| ≤ rtol·score: a flip there is allowed and
counted), and the max absolute map difference. fp32 exports are compared with torch fp32, bf16 ones with
torch bf16 (the same numeric path), and also with torch fp32 (what the bf16 path costs).

    python benchmarks/export_parity.py --model models/magnetic_tile --images DATA/magnetic_tile/test
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from ear_stream.export.writer import (
    SCORE_RTOL_BF16,
    SCORE_RTOL_FP32,
    export_model,
    in_tolerance_band,
    score_difference,
)
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.io.decode import decode_image, list_images

#: (format, precision the export is built/loaded with, torch path compared against)
EXPORTS = [
    ("onnx", "fp32", "fp32"),
    ("openvino", "fp32", "fp32"),
    ("openvino", "bf16", "bf16"),
    ("aoti", "fp32", "fp32"),
    ("aoti", "bf16", "bf16"),
]


def score_all(pipe: Pipeline, images: torch.Tensor, batch: int) -> tuple[np.ndarray, torch.Tensor]:
    scores, maps = [], []
    for i in range(0, images.shape[0], batch):
        res = pipe.score_tensor(images[i : i + batch], want_maps=True)
        assert res.maps is not None
        scores.append(res.scores)
        maps.append(res.maps)
    return np.concatenate(scores), torch.cat(maps)


def compare(
    got: tuple[np.ndarray, torch.Tensor], want: tuple[np.ndarray, torch.Tensor], threshold: float, bf16: bool
) -> dict:
    """The differences of one export against one torch path: relative (the fp32 criterion) and relative to
    max(|score|, threshold) (the bf16 one); verdict flips, and those within the band of the criterion used."""
    rtol = SCORE_RTOL_BF16 if bf16 else SCORE_RTOL_FP32
    rel = score_difference(got[0], want[0])
    rel_thr = score_difference(got[0], want[0], threshold)
    differ = (got[0] > threshold) != (want[0] > threshold)
    in_band = in_tolerance_band(want[0], threshold, bf16)
    return {
        "rtol": rtol,
        "max_rel": float(rel.max()),
        "median_rel": float(np.median(rel)),
        "max_rel_thr": float(rel_thr.max()),
        "flips": int(differ.sum()),
        "flips_in_band": int((differ & in_band).sum()),
        "in_band": int(in_band.sum()),
        "map_max_abs": float((got[1] - want[1]).abs().max()),
    }


def row(name: str, against: str, r: dict) -> str:
    return (
        f"| {name} | {against} | {r['rtol']:.0e} | {r['max_rel']:.2e} | {r['median_rel']:.2e} | {r['max_rel_thr']:.2e} "
        f"| {r['flips']} | {r['flips_in_band']} | {r['in_band']} | {r['map_max_abs']:.2e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--exports", default=",".join(f"{f}:{p}" for f, p, _ in EXPORTS), help="format:precision,…")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chosen = [tuple(item.split(":")) for item in args.exports.split(",")]
    paths = [p for p in list_images([str(args.images)]) if "_mask" not in p.name]
    ref = {p: Pipeline.from_artifact(args.model, device="cpu", precision=p) for p in ("fp32", "bf16")}
    images = ref["fp32"].prepare([decode_image(p.read_bytes()) for p in paths])
    assert isinstance(images, torch.Tensor)
    threshold = ref["fp32"].threshold
    want = {p: score_all(pipe, images, args.batch) for p, pipe in ref.items()}
    print(f"{len(paths)} images from {args.images}, {images.shape[-1]} px, threshold {threshold:.4f}")
    print("| export | vs torch | rtol | max rel | median rel | max rel to max(score, thr) | flips | in band | band n "
          "| map max abs |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    print(row("torch bf16", "fp32", compare(want["bf16"], want["fp32"], threshold, True)), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, precision in chosen:
            out = Path(tmp) / f"{fmt}-{precision}"
            export_model(args.model, fmt, out, precision if fmt != "openvino" else "fp32")
            pipe = Pipeline.from_artifact(out, device="cpu", precision=precision)
            got = score_all(pipe, images, args.batch)
            for against in dict.fromkeys([precision, "fp32"]):
                r = compare(got, want[against], threshold, precision == "bf16")
                print(row(f"{fmt} {precision}", against, r), flush=True)


if __name__ == "__main__":
    main()
