"""``score --ray`` against plain ``score``: images/s on this machine, side by side in one run.

Writes ``--n`` generated 256×256 images and trains a small model (128 px, a few steps: the rate, not the
quality, is measured), then scores them three ways into fresh folders: plain ``score_files`` in this
process (one torch thread), Ray Data with a pool of 1 CPU actor, and with 2. The Ray rows start after
``ray.init`` (reported apart): the rate is that of the pipeline, the start-up a fixed cost per run.

    python benchmarks/score_ray.py --n 256
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from ear_stream_workers.batch import score_on_ray
from ear_stream_workers.local import init_ray

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.scoring import score_files
from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import write_synthetic_category
from ear_stream.io.decode import list_images
from ear_stream.model.config import ModelConfig, TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ear-ray-") as tmp_name:
        tmp = Path(tmp_name)
        write_synthetic_category(
            tmp / "data", "synthetic", n_train=24, n_test_good=args.n // 2, n_test_defect=args.n // 2
        )
        model = train_model(
            tmp / "data", "synthetic", tmp / "model" / "synthetic", ModelConfig(image_size=128, saliency="none"),
            TrainConfig(epochs=1, batch_size=8), mosaic_scale=8, progress=False, max_steps=5,
        )  # fmt: skip
        files = list_images([str(tmp / "data" / "synthetic" / "test")])
        pipe = Pipeline.from_artifact(model, "cpu")
        t0 = time.perf_counter()
        score_files(pipe, files, tmp / "plain", "synthetic", args.batch_size, progress=False)
        plain = len(files) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        init_ray(num_cpus=os.cpu_count())
        ray_start = time.perf_counter() - t0
        rates = {}
        for actors in (1, 2):
            t0 = time.perf_counter()
            report = score_on_ray(
                [str(tmp / "data" / "synthetic" / "test")], model, tmp / f"ray{actors}", "synthetic",
                batch_size=args.batch_size, actors=(actors, actors), pipeline_options={"device": "cpu"},
                progress=False,
            )  # fmt: skip
            rates[actors] = report.scored / (time.perf_counter() - t0)
        print(f"{len(files)} images 256x256 -> 128 px model, batch {args.batch_size}, {os.cpu_count()} CPUs")
        print(f"{'path':<34} {'images/s':>9} {'vs score':>9}")
        print(f"{'score (this process, 1 thread)':<34} {plain:>9.1f} {1.0:>9.2f}")
        for actors, rate in rates.items():
            print(f"{f'score --ray, {actors} CPU actor(s)':<34} {rate:>9.1f} {rate / plain:>9.2f}")
        print(f"ray.init (local, once per run): {ray_start:.1f} s")


if __name__ == "__main__":
    main()
