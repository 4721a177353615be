"""Keeping what a person must see and a model must learn from (docs/design.md, "Keeping images").

A worker on a real redis-server keeps the pushed payload of every flagged row (camera faults included) and
of the passed review sample, byte for byte under its sha256, and the row names it; a store that fails (a
file where its folder should be, a full tmpfs) loses no entry and leaves ``image_uri`` null, and keeping
resumes when the store does; retention deletes the oldest; ``score --keep-images`` keeps the files as read;
parts written before the column read back with it null.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import fill_disk, needs_redis
from PIL import Image

from ear_stream.cli import main
from ear_stream.errors import ConfigError
from ear_stream.io.keeping import ImageKeeper, KeepPolicy, in_passed_sample, parse_bytes
from ear_stream.io.results import FILE_SCHEMA, SCHEMA, now_utc, read_results, write_table_atomic
from ear_stream.io.store import BlobStore, StoredRef
from ear_stream.stream import queue as q
from ear_stream.stream.worker import Worker, WorkerConfig


def blank_png() -> bytes:
    """A lens-cap frame: constant grey, which the frame check flags (is_anomaly, frame_check set)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def payloads(synthetic_root) -> list[bytes]:
    return [p.read_bytes() for p in sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))]


def worker_cfg(redis_server, models_dir, stream_cfg, out: Path, **keep) -> WorkerConfig:  # type: ignore[no-untyped-def]
    return WorkerConfig(
        redis_url=redis_server.url,
        models_dir=models_dir,
        out_dir=out,
        stream=stream_cfg,
        device="cpu",
        batch_size=8,
        flush_rows=8,
        flush_seconds=0.2,
        block_ms=100,
        claim_every_s=0.2,
        exit_when_idle_s=1.0,
        **keep,
    )


def push_all(client, stream_cfg, items: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for ident, data in items.items():
        q.push(client, "synthetic", data, ident, None, stream_cfg)


def assert_nothing_lost(client, stream_cfg, table: pa.Table, ids) -> None:  # type: ignore[no-untyped-def]
    assert sorted(table["id"].to_pylist()) == sorted(ids)
    assert client.xlen(stream_cfg.dlq) == 0 and client.xlen(stream_cfg.stream) == 0
    assert q.backlog(client, stream_cfg) == (0, 0)


@needs_redis
def test_a_worker_keeps_flagged_images_and_the_passed_sample(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    items = {f"part-{i:03d}": payloads[i % len(payloads)] for i in range(24)}
    items["lens-cap"] = blank_png()
    push_all(client, stream_cfg, items)
    keep = tmp_path / "kept"
    cfg = worker_cfg(redis_server, models_dir, stream_cfg, tmp_path / "out", keep_images=str(keep), keep_passed=0.4)
    worker = Worker(cfg)
    stats = worker.run()
    table = read_results(tmp_path / "out")
    assert_nothing_lost(client, stream_cfg, table, items)
    assert table.schema == SCHEMA
    store = BlobStore(keep)
    rows = table.to_pylist()
    expected = {r["id"] for r in rows if r["is_anomaly"] or in_passed_sample("synthetic", r["id"], 0.4)}
    kept = {r["id"] for r in rows if r["image_uri"]}
    assert kept == expected
    assert any(not r["is_anomaly"] for r in rows if r["image_uri"])  # passed ones in the sample are kept
    assert any(not r["image_uri"] for r in rows)  # ... and only those
    lens_cap = next(r for r in rows if r["id"] == "lens-cap")
    assert lens_cap["frame_check"] and lens_cap["image_uri"]  # a camera fault is flagged, so kept
    for row in rows:
        if row["image_uri"]:
            data = store.get(row["image_uri"])
            assert data == items[row["id"]]  # the original payload, byte for byte
            assert row["image_uri"].endswith(hashlib.sha256(data).hexdigest() + ".png")
            assert row["image_uri"].startswith(keep.absolute().as_uri())
    assert stats["images_kept"] == len(kept) and stats["image_keep_failures"] == 0
    usage = store.usage()
    assert stats["kept_image_bytes"] == usage.bytes and stats["kept_image_objects"] == usage.objects
    assert worker.metrics.kept_image_bytes._value.get() == usage.bytes
    assert worker.metrics.images_kept._value.get() == len(kept)
    assert not list(keep.rglob(".*.tmp"))
    # the verdict stream says where the image is, for a consumer that shows it
    verdicts = {f[b"id"].decode(): f.get(b"image_uri") for _, f in client.xrange(stream_cfg.results)}
    assert {k for k, uri in verdicts.items() if uri} == kept
    args = ["status", "--redis", redis_server.url, "--stream", stream_cfg.stream, "--group", stream_cfg.group]
    shown = CliRunner().invoke(main, [*args, "--dlq", stream_cfg.dlq])
    assert shown.exit_code == 0, shown.output
    assert f"images kept {len(kept)} (store: {usage.objects} images, " in shown.output


@needs_redis
def test_without_keep_images_nothing_is_kept_and_the_column_is_null(
    redis_server, models_dir, stream_cfg, payloads, tmp_path
):
    client = q.connect(redis_server.url)
    items = {f"plain-{i}": payloads[i] for i in range(4)}
    push_all(client, stream_cfg, items)
    stats = Worker(worker_cfg(redis_server, models_dir, stream_cfg, tmp_path / "out")).run()
    table = read_results(tmp_path / "out")
    assert_nothing_lost(client, stream_cfg, table, items)
    assert table["image_uri"].null_count == len(items) and "images_kept" not in stats


@needs_redis
def test_a_store_that_is_a_file_loses_nothing_and_leaves_image_uri_null(
    redis_server, models_dir, stream_cfg, payloads, tmp_path, caplog
):
    client = q.connect(redis_server.url)
    items = {f"file-{i:02d}": payloads[i % len(payloads)] for i in range(12)}
    push_all(client, stream_cfg, items)
    blocked = tmp_path / "kept"
    blocked.write_text("not a folder")  # the store cannot open: every put fails
    cfg = worker_cfg(redis_server, models_dir, stream_cfg, tmp_path / "out", keep_images=str(blocked), keep_passed=1.0)
    with caplog.at_level(logging.WARNING, logger="ear_stream.io.keeping"):
        worker = Worker(cfg)
        stats = worker.run()
    table = read_results(tmp_path / "out")
    assert_nothing_lost(client, stream_cfg, table, items)
    assert table["image_uri"].null_count == len(items)
    assert stats["images_kept"] == 0 and stats["image_keep_failures"] == len(items)
    assert worker.metrics.image_keep_failures._value.get() == len(items)
    assert worker.metrics.image_keep_failing._value.get() == 1
    warnings = [r for r in caplog.records if "cannot keep images" in r.getMessage()]
    assert len(warnings) == 1  # once per episode, not once per row


@needs_redis
def test_a_full_store_loses_nothing_and_keeping_resumes_when_space_returns(
    redis_server, models_dir, stream_cfg, payloads, small_disk, tmp_path, caplog
):
    client = q.connect(redis_server.url)
    first = {f"full-{i:02d}": payloads[i % len(payloads)] for i in range(16)}
    push_all(client, stream_cfg, first)
    ballast = fill_disk(small_disk)
    cfg = worker_cfg(
        redis_server, models_dir, stream_cfg, tmp_path / "out", keep_images=str(small_disk), keep_passed=1.0
    )
    cfg.exit_when_idle_s = 3.0
    worker = Worker(cfg)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(worker.run()), daemon=True)
    with caplog.at_level(logging.INFO, logger="ear_stream.io.keeping"):
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while worker.stats["scored"] < len(first) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.stats["scored"] == len(first) and worker.stats["image_keep_failures"] == len(first)
            ballast.unlink()  # space returns
            later = {f"later-{i:02d}": payloads[i % len(payloads)] for i in range(16)}
            push_all(client, stream_cfg, later)
            thread.join(60)
            assert not thread.is_alive()
        finally:
            worker.stop()
            thread.join(30)
    table = read_results(tmp_path / "out")
    assert_nothing_lost(client, stream_cfg, table, {**first, **later})
    by_id = {r["id"]: r["image_uri"] for r in table.to_pylist()}
    assert all(by_id[i] is None for i in first)  # the disk was full: rows written without their image
    resumed = [i for i in later if by_id[i]]
    assert len(resumed) > len(later) // 2, by_id  # keeping comes back on its own, within a batch
    store = BlobStore(small_disk)
    assert all(store.get(by_id[i]) == later[i] for i in resumed)
    assert any("kept again" in r.getMessage() for r in caplog.records)
    assert not list(small_disk.rglob(".*.tmp"))  # a failed put leaves no temporary behind


@needs_redis
def test_a_worker_leaves_its_store_within_keep_bytes(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    items = {f"budget-{i:02d}": payloads[i] for i in range(len(payloads))}  # distinct images, distinct blobs
    push_all(client, stream_cfg, items)
    budget = 3 * max(len(p) for p in payloads)
    keep = tmp_path / "kept"
    cfg = worker_cfg(redis_server, models_dir, stream_cfg, tmp_path / "out", keep_images=str(keep), keep_passed=1.0)
    cfg.keep_bytes = budget
    worker = Worker(cfg)
    stats = worker.run()
    assert_nothing_lost(client, stream_cfg, read_results(tmp_path / "out"), items)
    usage = BlobStore(keep).usage()
    assert stats["images_kept"] == len(items) and 0 < usage.bytes <= budget < sum(len(p) for p in payloads)
    assert stats["kept_image_bytes"] == usage.bytes == worker.metrics.kept_image_bytes._value.get()


class HungStore:
    """A store whose puts block until released (an object store that stopped answering)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def put(self, data: bytes) -> StoredRef:
        self.calls += 1
        self.release.wait(30)
        return StoredRef(f"mem://{len(data)}", "0" * 64, len(data))


def test_a_hung_store_costs_rows_their_image_not_the_line_its_pace():
    keeper = ImageKeeper(KeepPolicy("unused", 1.0), wait_s=0.3)
    hung = HungStore()
    keeper._store = hung  # type: ignore[assignment]
    rows = [{"image_uri": None} for _ in range(3)]
    for row in rows:
        keeper.keep(row, b"x")
    started = time.monotonic()
    keeper.settle()
    assert time.monotonic() - started < 2.0 and keeper.failing  # waited its bound, not the store
    assert [r["image_uri"] for r in rows] == [None, None, None]
    more = [{"image_uri": None} for _ in range(5)]
    for row in more:
        keeper.keep(row, b"y")  # the store fails and a put is still out: nothing queues behind it
    keeper.settle()
    assert hung.calls == 1 and keeper.failed == 8 and all(r["image_uri"] is None for r in more)
    hung.release.set()  # the store answers again
    time.sleep(0.2)
    back = [{"image_uri": None} for _ in range(2)]
    for row in back:
        keeper.keep(row, b"zz")
    keeper.settle()
    assert back[0]["image_uri"] == "mem://2" and not keeper.failing
    keeper.close()


def test_retention_by_bytes_deletes_the_oldest_first(tmp_path):
    blobs = [bytes([i]) * 1000 for i in range(6)]
    store = BlobStore(tmp_path / "kept")
    refs = [store.put(b) for b in blobs]
    for age, ref in zip(range(60, 0, -10), refs, strict=True):  # refs[0] the oldest
        path = tmp_path / "kept" / ref.key
        os.utime(path, (time.time() - age, time.time() - age))
    gauge: list = []
    keeper = ImageKeeper(KeepPolicy(str(tmp_path / "kept"), 0.0, max_bytes=parse_bytes("3.5K")), on_usage=gauge.append)
    usage = keeper.prune_now()
    keeper.close()
    assert usage is not None and usage.objects == 3 and usage.bytes == 3000 and gauge == [usage]
    assert [store.exists(r) for r in refs] == [False, False, False, True, True, True]


def test_sizes_and_policy_are_checked():
    assert parse_bytes("10G") == 10 * 1000**3 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("2048") == 2048
    assert parse_bytes("1.5k") == 1500
    for bad in ("", "ten", "-1", "0", "5X"):
        with pytest.raises(ConfigError):
            parse_bytes(bad)
    with pytest.raises(ConfigError):
        KeepPolicy("kept", 1.5)
    policy = KeepPolicy("kept", 0.0)
    assert policy.wants("p", "a", True) and not policy.wants("p", "a", False)
    # the sample is nested: what is kept at 1 % is in the station's 5 % queue
    ids = [f"id-{i}" for i in range(2000)]
    small = {i for i in ids if in_passed_sample("p", i, 0.01)}
    assert small and small <= {i for i in ids if in_passed_sample("p", i, 0.05)}


def test_the_keep_options_travel_to_an_actor(tmp_path):
    cfg = WorkerConfig("redis://x", tmp_path, tmp_path, keep_images=tmp_path / "k", keep_bytes=10, keep_days=2.0)
    data = json.loads(json.dumps(cfg.to_dict()))
    back = WorkerConfig.from_dict(data)
    policy = back.keep_policy()
    assert policy is not None and policy.location == str(tmp_path / "k") and policy.max_bytes == 10
    assert policy.max_age_s == 2 * 86400 and back.keep_passed == cfg.keep_passed


def test_score_keeps_the_files_as_read(tiny_model, synthetic_root, tmp_path):
    files = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))
    keep = tmp_path / "kept"
    args = [
        "score",
        str(synthetic_root / "synthetic" / "test"),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "r"),
    ]
    result = CliRunner().invoke(main, [*args, "--keep-images", str(keep), "--keep-passed", "1", "--keep-bytes", "10M"])
    assert result.exit_code == 0, result.output
    assert f"kept {len(files)} original images" in result.output
    table = read_results(tmp_path / "r")
    store = BlobStore(keep)
    assert table.num_rows == len(files) and table["image_uri"].null_count == 0
    for row in table.to_pylist():
        assert store.get(row["image_uri"]) == Path(row["id"]).read_bytes()

    flagged_only = CliRunner().invoke(
        main, [*args[:-1], str(tmp_path / "r2"), "--keep-images", str(keep), "--keep-passed", "0"]
    )
    assert flagged_only.exit_code == 0, flagged_only.output
    rows = read_results(tmp_path / "r2").to_pylist()
    assert all(bool(r["image_uri"]) == r["is_anomaly"] for r in rows)

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused = CliRunner().invoke(main, [*args, "--keep-images", str(a_file)])
    assert refused.exit_code == 2 and "is a file, not a folder" in refused.output
    no_store = CliRunner().invoke(main, [*args, "--keep-bytes", "1G"])
    assert no_store.exit_code == 2 and "--keep-images" in no_store.output


def test_parts_written_before_the_column_read_with_it_null(tmp_path):
    old_schema = pa.schema([f for f in FILE_SCHEMA if f.name != "image_uri"])
    row = {name: None for name in old_schema.names}
    row.update(id="old", score=0.1, normalized_score=0.1, is_anomaly=False, threshold=1.0, processed_at=now_utc())
    write_table_atomic(
        pa.Table.from_pylist([row], schema=old_schema), tmp_path / "product=p" / "date=2026-01-01" / "part-a-1.parquet"
    )
    table = read_results(tmp_path)
    assert table.schema == SCHEMA and table.num_rows == 1 and table["image_uri"].to_pylist() == [None]
