"""Does the drift alert stay quiet on the product's own images and fire on a changed line? (issue #27)

Scores a dataset's test images once with a trained model (scores and the image statistics of the
out-of-distribution check), then replays them into the worker's
:class:`~ear_stream.stream.drift.DriftMonitor` in shuffled stream orders, batch by batch as a worker
would: the good test images, the good ones with defective ones mixed in at a line-like rate, the
defective ones alone, and the good images changed as a line changes (brighter, dimmer, more contrast,
out of focus). Prints, per case, the largest score ratio and input shift the monitor reported, and in
how many stream orders it alerted, each way.

    .venv/bin/python benchmarks/drift_own_images.py ../shared/data --category magnetic_tile --model M
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.model.precision import cpu_capability
from ear_stream.stream.drift import DriftMonitor

CHANGES = {
    "brighter x1.35": lambda im: ImageEnhance.Brightness(im).enhance(1.35),
    "dimmer x0.8": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast x1.3": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    "blurred (sigma 2)": lambda im: im.filter(ImageFilter.GaussianBlur(2.0)),
}


def score(pipe: Pipeline, paths: list[Path], change=None) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    arrays = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        arrays.append(np.asarray(change(image) if change else image))
    scores, _, features = pipe.score_batches(pipe.prepare(arrays), 16, want_features=True)
    return np.asarray(scores, np.float64), np.asarray(features, np.float64)


def replay(case: tuple[np.ndarray, np.ndarray], pipe: Pipeline, seed: int) -> dict:
    """One shuffled stream through a fresh monitor: the largest ratio/shift reported and the alerts."""
    scores, features = case
    monitor = DriftMonitor()
    order = np.random.default_rng(seed).permutation(len(scores))
    out = {"ratio": 0.0, "shift": 0.0, "scores": False, "inputs": False}
    for start in range(0, len(order), 16):
        batch = order[start : start + 16]
        monitor.observe("p", scores[batch], pipe.threshold, pipe.calibration, features[batch])
        report = monitor.report("p")
        out["ratio"] = max(out["ratio"], report.get("ratio", 0.0))
        out["shift"] = max(out["shift"], report.get("shift", 0.0))
        for kind in report.get("alert_on", ()):
            out[kind] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--category", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--orders", type=int, default=50, help="Shuffled stream orders per case.")
    parser.add_argument("--defect-rate", type=float, default=0.05, help="Share of defective images mixed in.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_artifact(args.model, device="cpu")
    test = args.data_root / args.category / "test"
    good_paths = sorted((test / "good").iterdir())
    defect_paths = sorted(p for d in sorted(test.iterdir()) if d.name != "good" for p in d.iterdir())
    good, defects = score(pipe, good_paths), score(pipe, defect_paths)
    rng = np.random.default_rng(0)
    mixed = rng.choice(len(defects[0]), int(round(args.defect_rate * len(good[0]) / (1 - args.defect_rate))))
    cases = {
        "own good images": good,
        f"good + {args.defect_rate:.0%} defective": tuple(
            np.concatenate([g, d[mixed]]) for g, d in zip(good, defects, strict=True)
        ),
        "defective images only": defects,
        **{name: score(pipe, good_paths, change) for name, change in CHANGES.items()},
    }
    calibration = pipe.calibration
    print(cpu_capability())
    print(
        f"model {args.model}: threshold {pipe.threshold:.4g}, {calibration.get('n')} held-out images; "
        f"{len(good_paths)} good and {len(defect_paths)} defective test images; {args.orders} stream orders per case"
    )
    monitor = DriftMonitor()
    print(f"alert: input shift >= {monitor.shift_alert} spreads and 4 standard errors (score ratio: reported only)")
    print(f"{'case':28s} {'ratio med/max':>14s} {'shift med/max':>14s}  alerts (scores, inputs)")
    for name, case in cases.items():
        runs = [replay(case, pipe, seed) for seed in range(args.orders)]
        ratio, shift = np.array([r["ratio"] for r in runs]), np.array([r["shift"] for r in runs])
        print(
            f"{name:28s} {np.median(ratio):6.2f}/{ratio.max():6.2f} {np.median(shift):7.2f}/{shift.max():5.2f}  "
            f"{sum(r['scores'] for r in runs)}/{args.orders}, {sum(r['inputs'] for r in runs)}/{args.orders}"
        )


if __name__ == "__main__":
    main()
