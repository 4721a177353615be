"""Stream worker throughput: Redis → decode → score → Parquet, against the bare pipeline.

Pushes N images into a local redis-server (started here, loopback), runs one
worker until the stream is drained, and prints end-to-end images/s, p50/p99
latency from XADD to durable Parquet, and the same pipeline's images/s on the
same decoded bytes without Redis, in one process:

    python benchmarks/bench_worker.py --n 500 --batch-size 32
    python benchmarks/bench_worker.py --model runs/mt128 --images ../shared/data/magnetic_tile/test/good
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import write_synthetic_category
from ear_stream.io.decode import decode_image, list_images
from ear_stream.io.results import read_results
from ear_stream.model.config import ModelConfig, TrainConfig
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisServer
from ear_stream.stream.worker import Worker, WorkerConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="images to push")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: train a tiny one)")
    p.add_argument("--images", default=None, help="folder/glob of images to push (default: generated sample)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="ear-bench-") as tmp:
        tmp = Path(tmp)
        if args.model is None or args.images is None:
            write_synthetic_category(tmp / "data", "synthetic", n_train=24, n_test_good=16, n_test_defect=8)
        model = args.model
        if model is None:
            cfg = ModelConfig(image_size=64, saliency="none", base_channels=16)
            model = train_model(
                tmp / "data",
                "synthetic",
                tmp / "models" / "synthetic",
                cfg,
                TrainConfig(epochs=1, batch_size=8),
                mosaic_scale=8,
                progress=False,
                max_steps=5,
            )
        models_dir = tmp / "models_link"
        models_dir.mkdir()
        (models_dir / "product").symlink_to(Path(model).resolve(), target_is_directory=True)
        files = list_images([args.images or str(tmp / "data" / "synthetic" / "test")])
        payloads = [f.read_bytes() for f in files]

        # the bare pipeline on the same bytes: decode + score, no queue, no Parquet
        pipe = Pipeline.from_artifact(model, device=args.device)
        bare_n = min(args.n, 256)
        pipe.score_arrays([decode_image(payloads[0])])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, bare_n, args.batch_size):
            chunk = [
                decode_image(payloads[i % len(payloads)]) for i in range(start, min(bare_n, start + args.batch_size))
            ]
            pipe.score_arrays(chunk)
        bare_rate = bare_n / (time.perf_counter() - t0)

        with RedisServer() as server:
            scfg = q.StreamConfig(stream="bench:in", group="bench", dlq="bench:dlq")
            client = q.connect(server.url)
            for i in range(args.n):
                q.push(client, "product", payloads[i % len(payloads)], f"img-{i}", None, scfg)
            wcfg = WorkerConfig(
                redis_url=server.url,
                models_dir=models_dir,
                out_dir=tmp / "out",
                stream=scfg,
                batch_size=args.batch_size,
                device=args.device,
                flush_rows=256,
                flush_seconds=1.0,
                block_ms=100,
                exit_when_idle_s=0.2,
            )
            worker = Worker(wcfg)
            t0 = time.perf_counter()
            stats = worker.run()
            elapsed = time.perf_counter() - t0
        table = read_results(tmp / "out")
        lat = np.asarray(table["latency_ms"].to_pylist(), dtype=np.float64)
        rate = stats["scored"] / elapsed
        print(
            f"model {model} (image_size {pipe.config.image_size}, device {pipe.device}), {args.n} images, "
            f"batch {args.batch_size}"
        )
        print(f"{'path':<28} {'images/s':>10}")
        print(f"{'bare pipeline (no Redis)':<28} {bare_rate:>10.1f}")
        print(f"{'worker, Redis -> Parquet':<28} {rate:>10.1f}")
        print(f"queue overhead ratio (bare / worker): {bare_rate / rate:.2f}x")
        print(
            f"latency XADD -> Parquet (includes queueing behind the backlog): p50 {np.percentile(lat, 50):.0f} ms, "
            f"p99 {np.percentile(lat, 99):.0f} ms; unique ids {table.num_rows}/{args.n}"
        )


if __name__ == "__main__":
    main()
