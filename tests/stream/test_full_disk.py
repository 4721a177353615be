"""A full results disk (a real 512 KiB tmpfs): the worker backs off, loses and dead-letters nothing, resumes.

The worker keeps its rows and its entries pending and claimed while the disk is full, never counts its own
write failures as deliveries, leaves no temporary file, and writes every row once space returns — for a
plain folder and for a ``file://`` URI (which used to leave broken Parquet files under their final names).
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import fill_disk, needs_redis

from ear_stream.io.results import read_results
from ear_stream.stream import queue as q
from ear_stream.stream.worker import Worker, WorkerConfig

pytestmark = needs_redis
N = 24


def deliveries(client, scfg) -> list[int]:
    return [int(p["times_delivered"]) for p in client.xpending_range(scfg.stream, scfg.group, "-", "+", 1000)]


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_a_full_disk_holds_the_line_and_it_resumes_when_space_returns(
    as_uri, small_disk, redis_server, models_dir, stream_cfg, synthetic_root
):
    client = q.connect(redis_server.url)
    images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))
    ids = [f"disk-{i:03d}" for i in range(N)]
    for i, ident in enumerate(ids):
        q.push(client, "synthetic", images[i % len(images)].read_bytes(), ident, None, stream_cfg)
    ballast = fill_disk(small_disk)
    cfg = WorkerConfig(
        redis_url=redis_server.url,
        models_dir=models_dir,
        out_dir=f"file://{small_disk}" if as_uri else small_disk,
        stream=stream_cfg,
        device="cpu",
        batch_size=8,
        flush_rows=8,
        flush_seconds=0.2,
        block_ms=100,
        claim_every_s=0.2,
        exit_when_idle_s=1.0,
    )
    worker = Worker(cfg)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(worker.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while worker.stats.get("write_failures", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # several claim_idle_ms (300 ms) pass while the disk is full
        assert thread.is_alive() and worker.stats.get("write_failures", 0) >= 3, worker.stats
        assert client.xlen(stream_cfg.dlq) == 0  # nothing dead-lettered for the worker's own fault
        assert client.xlen(stream_cfg.stream) == N
        assert max(deliveries(client, stream_cfg), default=1) == 1  # kept claimed, never re-delivered
        assert worker.metrics.results_write_failing._value.get() == 1
        leftovers = [p.name for p in small_disk.rglob("*") if p.is_file() and p != ballast]
        assert leftovers == [], leftovers  # no temporary file, no broken part under a final name
        ballast.unlink()  # space returns
        thread.join(120)
        assert not thread.is_alive()
    finally:
        worker.stop()
        thread.join(30)
    table = read_results(small_disk)
    assert sorted(set(table["id"].to_pylist())) == sorted(ids)
    assert client.xlen(stream_cfg.dlq) == 0 and client.xlen(stream_cfg.stream) == 0
    assert q.backlog(client, stream_cfg) == (0, 0)
    assert worker.metrics.results_write_failing._value.get() == 0
    assert not [p for p in small_disk.rglob(".*.tmp")]
