"""Soak test of the streaming path: a fixed-rate producer against worker processes, memory sampled every second.

Starts its own redis-server on loopback (or uses --redis), worker processes
(``ear-stream worker``), a producer pushing realistic 256×256 PNGs at --rate
images/s through :class:`ear_stream.stream.producer.Producer` (backpressure, never
trimming), and a reader of the verdict stream that measures XADD → verdict
latency (verdict entry time − input entry time, both Redis server clocks). Every
second it samples ``used_memory``, XLEN of every stream, lag, pending and the RSS
of each worker. ``--rate auto`` first measures the workers' maximum throughput on
a burst and runs at half of it.

    python benchmarks/soak.py --minutes 10 --rate auto --workers 1 --flush-seconds 0.2 --out runs/soak

Ends with counts (pushed, scored in Parquet, in the DLQ, lost = 0), memory
min/max/final, latency p50/p99, OUT/soak.json and OUT/soak.png.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ear_stream.inspect.visualize import line_chart_png
from ear_stream.io.results import read_results
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisServer


def realistic_pngs(n: int = 8, size: int = 256, seed: int = 0) -> list[bytes]:
    """Gray textured surfaces with noise, PNG-encoded: about the size of a real line-scan crop."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        _yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        base = 0.45 + 0.1 * np.sin(xx / rng.uniform(3, 7)) + rng.normal(0, 0.08, (size, size))
        buf = io.BytesIO()
        Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def demo_models_dir(root: Path) -> Path:
    """MODELS_DIR holding the 64-px demo model (trained once on the generated sample, as ``ear-stream demo`` does)."""
    from ear_stream.cli.demo import ensure_model

    return ensure_model(root, epochs=3, image_size=64).parent


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, args: argparse.Namespace, url: str, models: Path) -> None:
        self.args, self.url, self.models = args, url, models
        self.cfg = q.StreamConfig(results="ear:out", results_maxlen=args.results_maxlen)
        self.client = q.connect(url)
        self.procs: list[subprocess.Popen] = []
        self.samples: list[dict] = []
        self.latencies_ms: list[float] = []
        self.pushed: list[str] = []
        self.stop_sampling = threading.Event()
        self.stop_reading = threading.Event()

    def start_workers(self) -> None:
        out = self.args.out / "results"
        for i in range(self.args.workers):
            log = open(self.args.out / f"worker-{i}.log", "w")  # noqa: SIM115 - lives as long as the worker
            cmd = [
                sys.executable, "-m", "ear_stream.cli", "worker", "--redis", self.url, "--models", str(self.models),
                "--out", str(out), "--device", "cpu", "--name", f"soak-{i}", "--batch-size", str(self.args.batch_size),
                "--flush-seconds", str(self.args.flush_seconds), "--flush-rows", str(self.args.flush_rows),
                "--results-stream", "ear:out", "--results-maxlen", str(self.args.results_maxlen),
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))

    def stop_workers(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def read_verdicts(self) -> None:
        last = "$"
        while not self.stop_reading.is_set():
            resp = self.client.xread({self.cfg.results: last}, count=500, block=200)
            for _, entries in resp or []:
                for sid, fields in entries:
                    last = sid.decode()
                    src = fields.get(b"stream_id", b"").decode()
                    if src:
                        self.latencies_ms.append(int(last.split("-")[0]) - int(src.split("-")[0]))

    def sample(self, t0: float) -> None:
        while not self.stop_sampling.is_set():
            lengths = q.stream_lengths(self.client, self.cfg)
            lag, pending = q.backlog(self.client, self.cfg)
            self.samples.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "used_memory": q.redis_memory(self.client)["used_memory"],
                    "xlen_in": lengths[self.cfg.stream],
                    "xlen_out": lengths.get(self.cfg.results, 0),
                    "xlen_dlq": lengths[self.cfg.dlq],
                    "lag": lag,
                    "pending": pending,
                    "rss_mb": [rss_mb(p.pid) for p in self.procs],
                }
            )
            self.stop_sampling.wait(1.0)

    def produce(self, rate: float, seconds: float, payloads: list[bytes], tag: str) -> int:
        producer = q.Producer(self.client, self.cfg, max_backlog=self.args.max_backlog, wait_timeout_s=60)
        start, n = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ident = f"{tag}-{n:07d}"
            producer.push("synthetic", payloads[n % len(payloads)], ident)
            self.pushed.append(ident)
            n += 1
        return n

    def wait_drained(self, timeout: float = 120) -> None:
        """Until the input stream is empty: with deletion on, XLEN is lag + pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.client.xlen(self.cfg.stream) > 0:
            time.sleep(0.05)


def measure_max_rate(soak: Soak, payloads: list[bytes], n: int) -> float:
    """Burst of n images, pushed at once: the drain rate is the workers' maximum throughput.

    A small warm-up batch first, so that model loading is not part of the measurement.
    """
    for i in range(20):
        q.push(soak.client, "synthetic", payloads[i % len(payloads)], f"warmup-{i}", None, soak.cfg)
    soak.wait_drained(timeout=300)
    for i in range(n):
        q.push(soak.client, "synthetic", payloads[i % len(payloads)], f"burst-{i}", None, soak.cfg)
    t0 = time.monotonic()
    soak.wait_drained(timeout=600)
    return n / (time.monotonic() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=None, help="overrides --minutes (the pytest version)")
    p.add_argument("--rate", default="auto", help="images/s, or auto = half the measured maximum")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--flush-seconds", type=float, default=0.2)
    p.add_argument("--flush-rows", type=int, default=256)
    p.add_argument("--max-backlog", type=int, default=2_000)
    p.add_argument("--results-maxlen", type=int, default=1_000)
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before the memory baseline is taken")
    p.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    p.add_argument("--models", type=Path, default=None, help="MODELS_DIR with a 'synthetic' model (default: demo)")
    p.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    duration = args.seconds if args.seconds is not None else 60 * args.minutes
    models = args.models or demo_models_dir(args.out / "demo")
    payloads = realistic_pngs()
    server = None if args.redis else RedisServer().start()
    url = args.redis or server.url
    soak = Soak(args, url, models)
    try:
        soak.start_workers()
        max_rate = measure_max_rate(soak, payloads, 200 * args.workers) if args.rate == "auto" else None
        rate = max_rate / 2 if max_rate else float(args.rate)
        print(
            f"max throughput {max_rate or float('nan'):.1f} images/s; soak at {rate:.1f} images/s for {duration:.0f}s"
        )
        reader = threading.Thread(target=soak.read_verdicts, daemon=True)
        reader.start()
        t0 = time.monotonic()
        sampler = threading.Thread(target=soak.sample, args=(t0,), daemon=True)
        sampler.start()
        pushed = soak.produce(rate, duration, payloads, "soak")
        soak.wait_drained()
        time.sleep(2 * args.flush_seconds + 1)
        soak.stop_sampling.set()
        sampler.join()
        soak.stop_reading.set()
        reader.join()
        dlq = int(soak.client.xlen(soak.cfg.dlq))
    finally:
        soak.stop_workers()
        if server is not None:
            server.stop()
    scored_ids = set(read_results(args.out / "results")["id"].to_pylist())
    pushed_ids = set(soak.pushed)
    lost = len(pushed_ids - scored_ids) - dlq
    mem = [s["used_memory"] for s in soak.samples]
    after_warmup = [s["used_memory"] for s in soak.samples if s["t"] >= args.warmup] or mem
    lat = sorted(soak.latencies_ms)
    summary = {
        "rate": rate,
        "max_rate": max_rate,
        "seconds": duration,
        "workers": args.workers,
        "flush_seconds": args.flush_seconds,
        "pushed": pushed,
        "scored": len(pushed_ids & scored_ids),
        "dlq": dlq,
        "lost": lost,
        "memory_min": min(mem),
        "memory_max": max(mem),
        "memory_final": mem[-1],
        "memory_after_warmup": after_warmup[0],
        "xlen_in_max": max(s["xlen_in"] for s in soak.samples),
        "xlen_in_final": soak.samples[-1]["xlen_in"],
        "xlen_out_max": max(s["xlen_out"] for s in soak.samples),
        "rss_mb_max": max((r or 0) for s in soak.samples for r in s["rss_mb"]),
        "latency_ms_p50": statistics.median(lat) if lat else None,
        "latency_ms_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "verdicts_seen": len(lat),
    }
    (args.out / "soak.json").write_text(json.dumps({"summary": summary, "samples": soak.samples}, indent=1))
    mib = {"used_memory MiB": [(s["t"], s["used_memory"] / 2**20) for s in soak.samples]}
    backlog = {
        "XLEN ear:in": [(s["t"], s["xlen_in"]) for s in soak.samples],
        "pending": [(s["t"], s["pending"]) for s in soak.samples],
        "XLEN ear:out / 10": [(s["t"], s["xlen_out"] / 10) for s in soak.samples],
    }
    top = Image.open(io.BytesIO(line_chart_png(mib, "Redis used_memory", "seconds", "MiB")))
    bottom = Image.open(io.BytesIO(line_chart_png(backlog, "backlog and streams", "seconds", "entries")))
    canvas = Image.new("RGB", (top.width, top.height + bottom.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height))
    canvas.save(args.out / "soak.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
