"""Bounded Redis memory: scored entries leave the stream, capped side streams, backpressure, eviction check, DLQ tools."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import needs_redis

from ear_stream.cli import main
from ear_stream.io.results import read_results
from ear_stream.stream import queue as q
from ear_stream.stream.worker import Worker, WorkerConfig

pytestmark = needs_redis


@pytest.fixture
def scfg(stream_cfg) -> q.StreamConfig:
    return stream_cfg


@pytest.fixture(scope="module")
def payload(synthetic_root) -> bytes:
    return next((synthetic_root / "synthetic" / "test" / "good").glob("*.png")).read_bytes()


def run_worker(redis_server, models_dir, out, scfg, **kw) -> dict:
    options = dict(
        device="cpu", batch_size=16, flush_seconds=0.2, block_ms=100, claim_every_s=0.2, exit_when_idle_s=0.5
    )
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=models_dir, out_dir=out, stream=scfg, **{**options, **kw})
    return Worker(cfg).run()


def test_scored_entries_leave_the_input_stream(redis_server, models_dir, scfg, payload, tmp_path):
    client = q.connect(redis_server.url)
    ids = [f"d-{i}" for i in range(40)]
    for ident in ids:
        q.push(client, "synthetic", payload, ident, None, scfg)
    assert client.xlen(scfg.stream) == 40
    stats = run_worker(redis_server, models_dir, tmp_path / "out", scfg)
    assert stats["scored"] == 40
    assert client.xlen(scfg.stream) == 0  # acknowledged and deleted once durable
    assert sorted(read_results(tmp_path / "out")["id"].to_pylist()) == sorted(ids)
    assert q.backlog(client, scfg) == (0, 0)


def test_retain_acked_keeps_entries_another_group_still_needs(redis_server, models_dir, payload, tmp_path):
    tag = uuid.uuid4().hex[:8]
    scfg = q.StreamConfig(stream=f"b:{tag}:in", group="g", dlq=f"b:{tag}:dlq", retain="acked")
    archiver = q.StreamConfig(stream=scfg.stream, group="archiver", dlq=scfg.dlq, retain="acked")
    client = q.connect(redis_server.url)
    q.ensure_group(client, scfg)
    q.ensure_group(client, archiver)
    for i in range(10):
        q.push(client, "synthetic", payload, f"r-{i}", None, scfg)
    run_worker(redis_server, models_dir, tmp_path / "out", scfg)
    assert client.xlen(scfg.stream) == 10  # the archiver has not read them: kept
    entries = q.read_new(client, archiver, "arch-1", 100, None)
    assert len(entries) == 10
    q.ack(client, archiver, [e.stream_id for e in entries[:4]])
    assert client.xlen(scfg.stream) == 6  # the last group to acknowledge deletes
    q.ack(client, archiver, [e.stream_id for e in entries[4:]])
    assert client.xlen(scfg.stream) == 0
    q.ack(client, archiver, [e.stream_id for e in entries])  # a duplicate ack deletes nothing twice
    assert len(read_results(tmp_path / "out")) == 10


def test_default_retain_deletes_even_with_a_second_group_and_says_so(redis_server, models_dir, scfg, payload, tmp_path):
    """The documented trade-off: retain=none assumes one group; a second group loses what it had not read."""
    client = q.connect(redis_server.url)
    q.ensure_group(client, scfg)
    client.xgroup_create(scfg.stream, "archiver", id="0")
    for i in range(5):
        q.push(client, "synthetic", payload, f"n-{i}", None, scfg)
    run_worker(redis_server, models_dir, tmp_path / "out", scfg)
    assert client.xlen(scfg.stream) == 0


def test_side_streams_are_capped(redis_server, models_dir, payload, tmp_path):
    tag = uuid.uuid4().hex[:8]
    scfg = q.StreamConfig(
        stream=f"c:{tag}:in", group="g", dlq=f"c:{tag}:dlq", results=f"c:{tag}:out", results_maxlen=100, dlq_maxlen=100
    )
    client = q.connect(redis_server.url)
    for i in range(400):
        q.push(client, "synthetic", payload, f"ok-{i}", None, scfg)
    for i in range(400):  # valid fields, unknown product: dead letters
        q.push(client, "nosuchproduct", payload, f"bad-{i}", None, scfg)
    stats = run_worker(redis_server, models_dir, tmp_path / "out", scfg, batch_size=64)
    assert stats["scored"] == 400 and stats["dead_letters"] == 400
    # approximate MAXLEN trims whole stream nodes (100 entries each): bounded, not exact
    assert client.xlen(scfg.results) <= 100 + 100 and client.xlen(scfg.dlq) <= 100 + 100
    assert client.xlen(scfg.stream) == 0
    hb = [k for k in client.scan_iter(match=scfg.heartbeat_prefix + "*")]
    assert hb and all(0 < client.ttl(k) <= scfg.heartbeat_ttl_s for k in hb)  # heartbeats expire


def test_producer_waits_then_refuses_and_nothing_is_trimmed(redis_server, scfg, payload):
    client = q.connect(redis_server.url)
    producer = q.Producer(client, scfg, max_backlog=5, wait_timeout_s=0.5)
    for i in range(5):
        producer.push("synthetic", payload, f"p-{i}")
    t0 = time.monotonic()
    with pytest.raises(q.BackpressureError, match="unscored entries"):
        producer.push("synthetic", payload, "p-5")
    assert time.monotonic() - t0 >= 0.45
    assert client.xlen(scfg.stream) == 5  # refused, not trimmed: the 5 accepted entries are all there


def test_producer_resumes_when_workers_drain(redis_server, models_dir, scfg, payload, tmp_path):
    client = q.connect(redis_server.url)
    producer = q.Producer(client, scfg, max_backlog=8, wait_timeout_s=60)
    stop = threading.Event()

    def drain() -> None:
        time.sleep(0.5)
        while not stop.is_set():
            run_worker(redis_server, models_dir, tmp_path / "out", scfg)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        for i in range(40):
            producer.push("synthetic", payload, f"w-{i}")
        assert producer.waited_s > 0.3  # it had to wait for the workers at least once
    finally:
        stop.set()
        thread.join(timeout=60)
    run_worker(redis_server, models_dir, tmp_path / "out", scfg)
    assert len(set(read_results(tmp_path / "out")["id"].to_pylist())) == 40


def test_cli_push_exits_3_under_backpressure(redis_server, scfg, synthetic_root):
    files = sorted((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))[:4]
    proc = subprocess.run(
        [sys.executable, "-m", "ear_stream.cli", "push", *map(str, files), "--redis", redis_server.url,
         "--product", "synthetic", "--stream", scfg.stream, "--max-backlog", "2", "--wait-timeout", "0.3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "2 not pushed" in proc.stderr and "Error:" in proc.stderr and "Traceback" not in proc.stderr
    assert q.connect(redis_server.url).xlen(scfg.stream) == 2


def test_worker_refuses_an_evicting_redis(redis_server, models_dir, scfg, tmp_path):
    client = q.connect(redis_server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(q.RedisSetupError, match=r"allkeys-lru.*--allow-eviction"):
            run_worker(redis_server, models_dir, tmp_path / "out", scfg)
        stats = run_worker(redis_server, models_dir, tmp_path / "out", scfg, allow_eviction=True)
        assert stats["scored"] == 0
    finally:
        client.config_set("maxmemory-policy", "noeviction")


def test_dlq_list_replay_and_purge(redis_server, models_dir, scfg, payload, tmp_path):
    client = q.connect(redis_server.url)
    for i in range(3):
        q.push(client, "laterproduct", payload, f"late-{i}", {"i": i}, scfg)
    client.xadd(scfg.stream, {"id": "broken-0", "product": "synthetic", "image": b"\x89PNG, but not an image"})
    run_worker(redis_server, models_dir, tmp_path / "out", scfg)
    opts = ["--redis", redis_server.url, "--stream", scfg.stream, "--dlq", scfg.dlq]
    runner = CliRunner()
    listed = json.loads(runner.invoke(main, ["dlq", "list", "--json", *opts]).output)
    assert sorted(x["reason"] for x in listed) == ["decode_error"] + ["unknown_product"] * 3
    assert all(x["replayable"] and x["age_s"] >= 0 for x in listed)
    text = runner.invoke(main, ["dlq", "list", *opts, "--product", "laterproduct"]).output
    assert "3 dead letters (unknown_product 3)" in text

    # the missing model is deployed: replay those entries, with their original fields
    (models_dir / "laterproduct").symlink_to(models_dir / "synthetic", target_is_directory=True)
    try:
        res = runner.invoke(main, ["dlq", "replay", *opts, "--reason", "unknown_product"])
        assert res.exit_code == 0 and "replayed 3 entries" in res.output
        run_worker(redis_server, models_dir, tmp_path / "out", scfg)
    finally:
        (models_dir / "laterproduct").unlink()
    rows = read_results(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in rows) == ["late-0", "late-1", "late-2"]
    assert sorted(json.loads(r["meta"])["i"] for r in rows) == [0, 1, 2]

    assert "give --reason" in runner.invoke(main, ["dlq", "purge", *opts]).output
    res = runner.invoke(main, ["dlq", "purge", *opts, "--reason", "decode_error"])
    assert "purged 1 dead letters" in res.output and client.xlen(scfg.dlq) == 0


def test_dlq_replay_refuses_entries_without_a_payload(redis_server, scfg):
    client = q.connect(redis_server.url)
    client.xadd(
        scfg.dlq, {"reason": "too_large", "message": "image too large", "orig_id": "big-1", "orig_product": "p"}
    )
    res = CliRunner().invoke(
        main, ["dlq", "replay", "--redis", redis_server.url, "--stream", scfg.stream, "--dlq", scfg.dlq]
    )
    assert res.exit_code == 2 and "refused 1" in res.output
    assert client.xlen(scfg.dlq) == 1 and client.xlen(scfg.stream) == 0


@pytest.mark.slow
def test_soak_holds_a_steady_state(models_dir, tmp_path):
    """30 s of 256×256 PNGs at a fixed rate through benchmarks/soak.py: nothing lost, memory flat."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "soak.py"), "--seconds", "30", "--rate", "12", "--warmup", "5",
         "--models", str(models_dir), "--out", str(out), "--batch-size", "16", "--flush-seconds", "0.2"],
        capture_output=True, text=True, timeout=240, cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "soak.json").read_text())["summary"]
    assert s["pushed"] >= 300 and s["lost"] == 0 and s["scored"] + s["dlq"] == s["pushed"]
    # steady state: ~300 images of ~150 KB went through; memory at the end is where it was after warm-up
    assert s["memory_final"] <= s["memory_after_warmup"] + 4 * 2**20, s
    assert s["memory_max"] - s["memory_min"] < 32 * 2**20, s
    # the input stream never holds more than the in-flight window: two batches plus a flush interval
    assert s["xlen_in_max"] <= 2 * 16 + 12 * (0.2 + 1.0) + 16, s
    assert s["xlen_in_final"] == 0 and (out / "soak.png").stat().st_size > 0
