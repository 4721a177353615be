"""The demo's own figures on each precision path, side by side in one run (issue #27: CPUs differ).

Trains the demo model (``ear_stream.cli.demo.ensure_model``: 96 generated images, 40 epochs) once per
precision and thread count, evaluates it on its 48 good and 48 defective test images under the same
precision, and prints the recovery ratio, the threshold with its held-out count, the share of good
images flagged and of defects caught, and the margins (highest good score, lowest defect score).

    .venv/bin/python benchmarks/demo_precision.py [--threads 1,2] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ear_stream.cli.demo import DEMO_EPOCHS, PRODUCT, ensure_model
from ear_stream.inspect.evaluation import evaluate
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.model.artifact import load_manifest
from ear_stream.model.precision import cpu_capability


def one(precision: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model = ensure_model(Path(tmp), DEMO_EPOCHS, 64, precision)
        seconds = time.perf_counter() - started
        manifest = load_manifest(model)
        pipe = Pipeline.from_artifact(model, device="cpu", precision=precision)
        result, material = evaluate(pipe, Path(tmp) / "data", PRODUCT, progress=False)
    labels, scores = material["labels"], result.scores
    flagged = ~(scores <= pipe.threshold)
    return {
        "precision": precision,
        "threads": threads,
        "train_s": seconds,
        "ratio": manifest.training["recovery"]["ratio_to_flat"],
        "threshold": pipe.threshold,
        "held_out": manifest.calibration["n"],
        "good_flagged": flagged[~labels].mean(),
        "caught": flagged[labels].mean(),
        "good_max": scores[~labels].max(),
        "defect_min": scores[labels].min(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    print(cpu_capability())
    print("precision threads train_s ratio_to_flat threshold held_out good_flagged caught good_max defect_min")
    for p in args.precisions.split(","):
        for t in (int(x) for x in args.threads.split(",")):
            r = one(p, t)
            print(
                f"{r['precision']:9} {r['threads']:7d} {r['train_s']:7.1f} {r['ratio']:13.3f} {r['threshold']:9.4f} "
                f"{r['held_out']:8d} {r['good_flagged']:12.1%} {r['caught']:6.1%} {r['good_max']:8.4f} "
                f"{r['defect_min']:10.4f}",
                flush=True,
            )
    print("medians are not taken: each row is one training; the spread across rows is the point")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
