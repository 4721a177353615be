"""Claim checks against inline payloads for large frames: Redis memory and push → verdict latency, side by side.

Generates ``--n`` line-scan frames of about ``--mb`` MB each (JPEG of a textured 4096×1024 web at
quality 100), then for each mode in one run, on a fresh loopback redis-server: pushes them all (inline,
or ``Producer(store=…)`` into a local-folder store), reads Redis' ``used_memory`` with the backlog in
place, runs one worker (tiny model, the frames resized to it as any whole-image model does) until the
stream is drained, and reports images/s and the latency XADD → durable Parquet. A second pass pushes the
frames one at a time with the worker already running (``--paced``), so the latency is that of a frame
on an idle line, not of a frame behind the backlog:

    python benchmarks/claim_check.py --n 40 --mb 4
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_worker import link_models
from PIL import Image

from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import write_synthetic_category
from ear_stream.io.results import read_results
from ear_stream.io.store import BlobStore
from ear_stream.model.config import ModelConfig, TrainConfig
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisServer
from ear_stream.stream.worker import Worker, WorkerConfig


def frames(n: int, mb: float, seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEG frames of 4096×1024 near ``mb`` MB (noise on a woven pattern; quality tuned)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1024, 0:4096]
    base = (128 + 40 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.float32)
    out = []
    for i in range(n):
        noise = rng.normal(0, 6 + 30 * mb / 4, size=(1024, 4096, 1)).astype(np.float32)
        arr = np.clip(base[..., None] + noise + i % 7, 0, 255).astype(np.uint8).repeat(3, axis=2)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=100)
        out.append(buf.getvalue())
    return out


def run_mode(models_dir: Path, payloads: list[bytes], tmp: Path, claim: bool, paced: bool) -> dict:
    """One mode on a fresh redis-server: memory with the backlog in Redis (or per frame, paced), rate, latency."""
    with RedisServer() as server:
        scfg = q.StreamConfig(stream="bench:in", group="bench", dlq="bench:dlq")
        client = q.connect(server.url)
        store = BlobStore(tmp / f"store-{claim}-{paced}") if claim else None
        producer = q.Producer(client, scfg, store=store, max_backlog=100_000)
        base_mem = int(client.info("memory")["used_memory"])
        out = tmp / f"out-{claim}-{paced}"
        wcfg = WorkerConfig(
            redis_url=server.url,
            models_dir=models_dir,
            out_dir=out,
            stream=scfg,
            device="cpu",
            batch_size=8,
            flush_rows=1 if paced else 64,
            flush_seconds=0.05 if paced else 1.0,
            block_ms=20,
            exit_when_idle_s=4.0 if paced else 1.0,  # paced: idle between frames, not done
            payload_store=None if store is None else str(store.local),
        )
        peak_mem = 0
        if paced:
            worker = Worker(wcfg)
            thread = threading.Thread(target=worker.run)
            thread.start()
            time.sleep(2.0)  # warm-up done: the worker waits on an empty stream
            for i, data in enumerate(payloads):
                producer.push("product", data, f"f{i}")
                peak_mem = max(peak_mem, int(client.info("memory")["used_memory"]) - base_mem)
                time.sleep(0.5)
            thread.join()
            stats, elapsed = worker.stats, None
        else:
            t0 = time.perf_counter()
            for i, data in enumerate(payloads):
                producer.push("product", data, f"f{i}")
            push_s = time.perf_counter() - t0
            peak_mem = int(client.info("memory")["used_memory"]) - base_mem
            worker = Worker(wcfg)
            t0 = time.perf_counter()
            stats = worker.run()
            elapsed = time.perf_counter() - t0 - stats.get("warmup_s", 0.0)
    table = read_results(out)
    lat = np.asarray(table["latency_ms"].to_pylist(), dtype=np.float64)
    return {
        "rows": table.num_rows,
        "redis_mb": peak_mem / 1e6,
        "rate": None if elapsed is None else stats["scored"] / elapsed,
        "push_s": None if paced else push_s,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40, help="frames")
    p.add_argument("--mb", type=float, default=4.0, help="approximate size of a frame in MB")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ear-claim-") as tmp_name:
        tmp = Path(tmp_name)
        write_synthetic_category(tmp / "data", "synthetic", n_train=24, n_test_good=4, n_test_defect=2)
        model = train_model(
            tmp / "data",
            "synthetic",
            tmp / "models" / "synthetic",
            ModelConfig(image_size=64, saliency="none", base_channels=16),
            TrainConfig(epochs=1, batch_size=8),
            mosaic_scale=8,
            progress=False,
            max_steps=5,
        )
        models_dir = link_models(model, tmp)
        payloads = frames(args.n, args.mb)
        mean_mb = float(np.mean([len(x) for x in payloads])) / 1e6
        print(f"{args.n} frames 4096x1024 JPEG, mean {mean_mb:.2f} MB; one worker, batch 8, tiny 64 px model, CPU")
        print(f"{'mode':<26} {'Redis MB (backlog)':>18} {'push s':>7} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        results = {}
        for claim in (False, True):
            for paced in (False, True):
                r = run_mode(models_dir, payloads, tmp, claim, paced)
                results[(claim, paced)] = r
                name = ("claim check" if claim else "inline") + (", paced 2/s" if paced else ", backlog")
                rate = "" if r["rate"] is None else f"{r['rate']:.1f}"
                push = "" if r["push_s"] is None else f"{r['push_s']:.2f}"
                print(
                    f"{name:<26} {r['redis_mb']:>18.2f} {push:>7} {rate:>9} {r['p50']:>8.0f} {r['p99']:>8.0f}"
                    + ("" if r["rows"] == args.n else f"  ROWS {r['rows']}/{args.n}")
                )
        inline, claim = results[(False, False)], results[(True, False)]
        print(
            f"Redis memory inline / claim check: {inline['redis_mb'] / max(claim['redis_mb'], 1e-3):.0f}x; "
            f"paced p50 latency claim / inline: {results[(True, True)]['p50'] / results[(False, True)]['p50']:.2f}x"
        )


if __name__ == "__main__":
    main()
