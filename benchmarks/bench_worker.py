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


def bare_rate(pipe: Pipeline, payloads: list[bytes], n: int, batch_size: int) -> float:
    """Images/s of decode + score on the same bytes, no queue, no Parquet (after one warm-up batch)."""
    pipe.score_arrays([decode_image(payloads[0])])
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        pipe.score_arrays([decode_image(payloads[i % len(payloads)]) for i in range(start, min(n, start + batch_size))])
    return n / (time.perf_counter() - t0)


def worker_run(models_dir: Path, payloads: list[bytes], n: int, out: Path, **worker_options) -> dict:
    """Push ``n`` entries into a fresh local redis-server, run one worker until drained; its figures."""
    with RedisServer() as server:
        scfg = q.StreamConfig(stream="bench:in", group="bench", dlq="bench:dlq")
        client = q.connect(server.url)
        for i in range(n):
            q.push(client, "product", payloads[i % len(payloads)], f"img-{i}", None, scfg)
        wcfg = WorkerConfig(
            redis_url=server.url,
            models_dir=models_dir,
            out_dir=out,
            stream=scfg,
            flush_rows=256,
            flush_seconds=1.0,
            block_ms=100,
            exit_when_idle_s=0.2,
            **worker_options,
        )
        worker = Worker(wcfg)
        t0 = time.perf_counter()
        stats = worker.run()
        elapsed = time.perf_counter() - t0 - stats.get("warmup_s", 0.0)  # the rate while scoring, not warming up
    table = read_results(out)
    lat = np.asarray(table["latency_ms"].to_pylist(), dtype=np.float64)
    return {**stats, "rate": stats["scored"] / elapsed, "latency": lat, "rows": table.num_rows}


def link_models(model: Path, root: Path) -> Path:
    """MODELS_DIR with ``model`` as product ``product``."""
    models_dir = root / "models_link"
    models_dir.mkdir(exist_ok=True)
    link = models_dir / "product"
    if not link.exists():
        link.symlink_to(Path(model).resolve(), target_is_directory=True)
    return models_dir


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
        models_dir = link_models(model, tmp)
        files = list_images([args.images or str(tmp / "data" / "synthetic" / "test")])
        payloads = [f.read_bytes() for f in files]
        pipe = Pipeline.from_artifact(model, device=args.device)
        bare = bare_rate(pipe, payloads, min(args.n, 256), args.batch_size)
        run = worker_run(models_dir, payloads, args.n, tmp / "out", batch_size=args.batch_size, device=args.device)
        lat, rate = run["latency"], run["rate"]
        print(
            f"model {model} (image_size {pipe.config.image_size}, device {pipe.device}), {args.n} images, "
            f"batch {args.batch_size}"
        )
        print(f"{'path':<28} {'images/s':>10}")
        print(f"{'bare pipeline (no Redis)':<28} {bare:>10.1f}")
        print(f"{'worker, Redis -> Parquet':<28} {rate:>10.1f}")
        print(f"queue overhead ratio (bare / worker): {bare / rate:.2f}x")
        print(
            f"latency XADD -> Parquet (includes queueing behind the backlog): p50 {np.percentile(lat, 50):.0f} ms, "
            f"p99 {np.percentile(lat, 99):.0f} ms; unique ids {run['rows']}/{args.n}"
        )


if __name__ == "__main__":
    main()
