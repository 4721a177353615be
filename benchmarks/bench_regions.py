"""Cost of defect regions (connected components on the maps' device) in the scoring path, side by side.

    python benchmarks/bench_regions.py MODEL_DIR --data ../shared/data --category magnetic_tile

Scores 64 real test images in batches of 16 with and without ``want_regions`` (interleaved, 5
rounds, medians), at the model's threshold and at half of it (many more images with regions:
labelling only runs on images with a pixel above the pixel threshold).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    from ear_stream.inspect.pipeline import Pipeline
    from ear_stream.io.datasets import test_samples
    from ear_stream.io.decode import read_image_file

    pipe = Pipeline.from_artifact(args.model, device=args.device)
    samples = test_samples(args.data, args.category)[::8][:64]
    arrays = [read_image_file(s.path) for s in samples]
    print(
        f"{len(arrays)} images of {args.category}, batches of 16, {args.device}, torch threads {torch.get_num_threads()}"
    )
    base = pipe.threshold
    for label, thr in (("model threshold", base), ("half the threshold", base / 2)):
        pipe.threshold = thr
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for want in (False, True):
                t0 = time.perf_counter()
                for i in range(0, len(arrays), 16):
                    pipe.score_arrays(arrays[i : i + 16], want_regions=want)
                times[want].append(time.perf_counter() - t0)
        res = pipe.score_arrays(arrays, want_regions=True)
        with_regions = sum(1 for r in res.regions if r)
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"{label}: {1000 * a / len(arrays):.1f} ms/image without regions, {1000 * b / len(arrays):.1f} with "
              f"(x{b / a:.2f}); {with_regions}/{len(arrays)} images have regions")  # fmt: skip


if __name__ == "__main__":
    main()
