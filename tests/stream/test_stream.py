"""Stream worker against a real redis-server: throughput, SIGKILL recovery, Redis restarts, fuzzing."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_redis
from PIL import Image

from ear_stream.cli import main
from ear_stream.io.results import read_results
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisServer, free_port
from ear_stream.stream.worker import Worker, WorkerConfig

pytestmark = needs_redis


@pytest.fixture(scope="module")
def payloads(synthetic_root) -> list[bytes]:
    files = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))
    return [p.read_bytes() for p in files]


def worker_cfg(redis_server, models_dir, out, scfg, **kw) -> WorkerConfig:
    base = dict(
        redis_url=redis_server.url,
        models_dir=models_dir,
        out_dir=out,
        stream=scfg,
        device="cpu",
        batch_size=16,
        flush_rows=64,
        flush_seconds=0.3,
        block_ms=100,
        claim_every_s=0.2,
        exit_when_idle_s=0.5,
    )
    base.update(kw)
    return WorkerConfig(**base)


def push_many(client, scfg, payloads, n, prefix="img") -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    for i, ident in enumerate(ids):
        q.push(client, "synthetic", payloads[i % len(payloads)], ident, {"i": i}, scfg)
    return ids


def assert_complete(client, scfg, out, ids):
    table = read_results(out)
    assert sorted(table["id"].to_pylist()) == sorted(ids)
    lag, pending = q.backlog(client, scfg)
    assert (lag, pending) == (0, 0)
    assert client.xlen(scfg.stream) == 0  # every entry was deleted, and only once its row was durable


def test_500_images_all_scored_once(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    ids = push_many(client, stream_cfg, payloads, 500)
    stats = Worker(worker_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg, batch_size=32)).run()
    assert stats["scored"] == 500 and stats["dead_letters"] == 0
    assert_complete(client, stream_cfg, tmp_path / "out", ids)
    raw = read_results(tmp_path / "out", dedupe=False)
    assert raw.num_rows == 500
    row = raw.slice(0, 1).to_pylist()[0]
    assert row["stream_id"] and row["latency_ms"] >= 0 and json.loads(row["meta"])["i"] >= 0
    assert client.xlen(stream_cfg.results) == 500


def _worker_cmd(redis_server, models_dir, out, scfg, name, idle=1.0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ear_stream.cli",
        "worker",
        "--redis",
        redis_server.url,
        "--models",
        str(models_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--flush-rows",
        "32",
        "--flush-seconds",
        "0.3",
        "--name",
        name,
        "--stream",
        scfg.stream,
        "--group",
        scfg.group,
        "--dlq",
        scfg.dlq,
        "--claim-idle-ms",
        str(scfg.claim_idle_ms),
        "--exit-when-idle",
        str(idle),
    ]


@pytest.mark.parametrize("point", ["before_score", "before_flush", "before_ack"])
def test_sigkill_mid_batch_loses_nothing(point, redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    ids = push_many(client, stream_cfg, payloads, 120)
    out = tmp_path / "out"
    env = {**os.environ, "EAR_FAULT_POINT": point, "EAR_FAULT_AFTER": "2"}
    proc = subprocess.run(
        _worker_cmd(redis_server, models_dir, out, stream_cfg, "victim"), env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    _, pending = q.backlog(client, stream_cfg)
    assert pending > 0  # the killed worker left unacknowledged entries behind
    # ... and every one of them is still in the stream: nothing is deleted before its ack (killed between
    # the Parquet rename and the ack+delete at before_ack), so nothing can be lost
    held = client.xpending_range(stream_cfg.stream, stream_cfg.group, "-", "+", 1000)
    assert all(client.xrange(stream_cfg.stream, r["message_id"], r["message_id"]) for r in held)
    durable = set(read_results(out)["id"].to_pylist()) if out.exists() else set()
    assert client.xlen(stream_cfg.stream) >= len(ids) - len(durable)  # only durable entries may have left
    # restarting under the same name re-reads its own pending entries; a new name reclaims them (XAUTOCLAIM)
    name = "victim" if point == "before_ack" else "rescuer"
    Worker(worker_cfg(redis_server, models_dir, out, stream_cfg, name=name)).run()
    assert_complete(client, stream_cfg, out, ids)
    if point == "before_ack":  # rows of the killed flush were on disk already: duplicates in raw files only
        assert read_results(out, dedupe=False).num_rows > len(ids)
    summary = json.loads(CliRunner().invoke(main, ["results", str(out), "--json"]).output)
    assert summary["rows"] == len(ids)


def test_sigterm_finishes_the_batch_flushes_and_acks(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    push_many(client, stream_cfg, payloads, 400)
    out = tmp_path / "out"
    cmd = _worker_cmd(redis_server, models_dir, out, stream_cfg, "graceful")[:-2]  # no --exit-when-idle
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(out.rglob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    stats = json.loads(stdout.decode().strip().splitlines()[-1])
    lag, pending = q.backlog(client, stream_cfg)
    assert pending == 0  # everything it had read was scored, written and acknowledged before leaving
    assert stats["scored"] == read_results(out).num_rows == 400 - lag


def test_redis_restart_while_worker_runs(models_dir, payloads, tmp_path):
    server = RedisServer(appendonly=True, data_dir=tmp_path / "redis").start()
    try:
        scfg = q.StreamConfig(stream="r:in", group="g", dlq="r:dlq", claim_idle_ms=300)
        client = q.connect(server.url)
        ids = push_many(client, scfg, payloads, 200)
        out = tmp_path / "out"
        proc = subprocess.Popen(
            _worker_cmd(server, models_dir, out, scfg, "survivor", idle=2.0),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not list(out.rglob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()  # SIGTERM: appendonly keeps every acknowledged XADD
        time.sleep(3.0)  # long enough for the client's own retries to give up
        assert proc.poll() is None, "the worker died while Redis was down"
        server.start()
        more = [f"late-{i}" for i in range(20)]
        for i, ident in enumerate(more):
            q.push(q.connect(server.url), "synthetic", payloads[i % len(payloads)], ident, None, scfg)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert_complete(q.connect(server.url), scfg, out, ids + more)
    finally:
        server.close()


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_bomb(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def test_fuzz_malformed_entries_go_to_dlq(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    rng = np.random.default_rng(7)
    stream_cfg.max_image_bytes = 200_000
    client = q.connect(redis_server.url)
    good_png = payloads[0]
    jpeg = io.BytesIO()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(jpeg, format="JPEG")
    jpeg = jpeg.getvalue()
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 40), (10, 20, 30, 40)).save(cmyk, format="JPEG")

    def bad_entries(i: int) -> list[tuple[dict, str]]:
        base = {"id": f"bad-{i}", "product": "synthetic"}
        return [
            (
                {**base, "id": f"bad-rand-{i}", "image": b"\x89PNG" + rng.bytes(int(rng.integers(1, 3000)))},
                q.DECODE_ERROR,
            ),
            (
                {**base, "id": f"bad-noise-{i}", "image": b"\x00" + rng.bytes(int(rng.integers(1, 3000)))},
                q.UNSUPPORTED_FORMAT,
            ),
            (
                {**base, "id": f"bad-tpng-{i}", "image": good_png[: int(rng.integers(8, len(good_png) - 8))]},
                q.DECODE_ERROR,
            ),
            ({**base, "id": f"bad-tjpg-{i}", "image": jpeg[: int(rng.integers(10, len(jpeg) // 2))]}, q.DECODE_ERROR),
            ({**base, "id": f"bad-empty-{i}", "image": b""}, q.DECODE_ERROR),
            ({**base, "id": f"bad-1x1-{i}", "image": _png(np.zeros((1, 1), np.uint8))}, q.TOO_SMALL),
            ({**base, "id": f"bad-bomb-{i}", "image": _png_header_bomb(20000, 20000)}, q.TOO_LARGE),
            ({"id": f"bad-noimg-{i}", "product": "synthetic"}, q.INVALID_FIELD),
            ({**base, "id": f"bad-prod-{i}", "product": "no_such_product", "image": good_png}, q.UNKNOWN_PRODUCT),
            ({**base, "id": f"bad-path-{i}", "product": "../etc", "image": good_png}, q.INVALID_FIELD),
            ({**base, "id": f"bad-big-{i}", "image": rng.bytes(250_000)}, q.TOO_LARGE),
            ({**base, "id": f"bad-meta-{i}", "image": good_png, "meta": "{not json"}, q.INVALID_FIELD),
            ({**base, "id": b"\xff\xfe" + str(i).encode(), "image": good_png}, q.INVALID_FIELD),
        ]

    good16 = _png((rng.random((50, 70)) * 65535).astype(np.uint16))
    goods = [good_png, jpeg, cmyk.getvalue(), good16, _png((rng.random((30, 30, 4)) * 255).astype(np.uint8))]
    expected_bad: dict[str, str] = {}
    good_ids = []
    for i in range(26):
        for fields, reason in bad_entries(i):
            sid = client.xadd(stream_cfg.stream, fields)
            expected_bad[sid.decode()] = reason
        for j, payload in enumerate(goods):
            ident = f"good-{i}-{j}"
            client.xadd(stream_cfg.stream, {"id": ident, "product": "synthetic", "image": payload})
            good_ids.append(ident)
    assert len(expected_bad) >= 300
    stats = Worker(worker_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg)).run()
    assert stats["dead_letters"] == len(expected_bad)
    dlq = client.xrange(stream_cfg.dlq)
    got = {f[b"stream_id"].decode(): f[b"reason"].decode() for _, f in dlq}
    assert got == expected_bad
    assert all(f[b"message"] for _, f in dlq)
    assert_complete(client, stream_cfg, tmp_path / "out", good_ids)


def test_max_deliveries_dead_letters_poison_entries(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    q.ensure_group(client, stream_cfg)
    sid = q.push(client, "synthetic", payloads[0], "poison", None, stream_cfg)
    client.xreadgroup(stream_cfg.group, "ghost", {stream_cfg.stream: ">"})
    for _ in range(stream_cfg.max_deliveries):
        client.xclaim(stream_cfg.stream, stream_cfg.group, "ghost", 0, [sid])  # each claim counts a delivery
    time.sleep(0.4)
    Worker(worker_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg)).run()
    (entry,) = client.xrange(stream_cfg.dlq)
    assert entry[1][b"reason"] == q.MAX_DELIVERIES.encode()
    assert q.backlog(client, stream_cfg) == (0, 0)


def test_cli_push_status_worker_and_metrics(redis_server, models_dir, synthetic_root, stream_cfg, tmp_path):
    runner = CliRunner()
    opts = [
        "--redis",
        redis_server.url,
        "--stream",
        stream_cfg.stream,
        "--group",
        stream_cfg.group,
        "--dlq",
        stream_cfg.dlq,
    ]
    good = synthetic_root / "synthetic" / "test" / "good"
    res = runner.invoke(main, ["push", str(good), "--product", "synthetic", *opts])
    assert res.exit_code == 0 and "pushed 6 images" in res.output
    res = runner.invoke(main, ["push", str(good / "0000.png"), "--product", "bad/name", *opts])
    assert res.exit_code == 2 and "invalid_field" in res.stderr

    port = free_port()
    cfg = worker_cfg(
        redis_server,
        models_dir,
        tmp_path / "out",
        stream_cfg,
        exit_when_idle_s=None,
        name="w-metrics",
        metrics_port=port,
    )
    w = Worker(cfg)
    thread = threading.Thread(target=w.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and w.stats["scored"] < 6:
            time.sleep(0.1)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'ear_images_scored_total{worker="w-metrics"} 6.0' in body
        # status reads the same counter, as of the worker's next heartbeat (every 2 s)
        while time.monotonic() < deadline and _status_of(runner, opts, "w-metrics").get("scored") != "6":
            time.sleep(0.2)
        status = json.loads(runner.invoke(main, ["status", "--json", *opts]).stdout)
        assert status["workers"]["w-metrics"]["scored"] == "6" and status["workers"]["w-metrics"]["age_s"] < 10
        assert status["length"] == 0 and status["group"]["pending"] == 0  # scored entries left the stream
        assert status["redis"]["used_memory"] > 0 and status["redis"]["maxmemory_policy"] == "noeviction"
        assert "ear_redis_used_memory_bytes" in body and "ear_stream_length{stream=" in body
        assert "w-metrics" in status["workers"]
        assert "live workers: 1" in runner.invoke(main, ["status", *opts]).output
    finally:
        w.stop()
        thread.join(30)
    assert not thread.is_alive()
    res = runner.invoke(
        main,
        [
            "worker",
            "--models",
            str(models_dir),
            "--out",
            str(tmp_path / "out2"),
            "--device",
            "cpu",
            "--exit-when-idle",
            "0.3",
            *opts,
        ],
    )
    assert res.exit_code == 0, res.output


def _status_of(runner, opts, worker: str) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(runner.invoke(main, ["status", "--json", *opts]).stdout)["workers"].get(worker, {})


def test_status_counts_live_workers_only(redis_server, stream_cfg):
    """A worker that stopped (its clean-exit marker) or went silent (killed: no heartbeat for
    STALE_HEARTBEAT_S) is listed as gone, not live."""
    client = q.connect(redis_server.url)
    for name in ("alive", "done", "killed"):
        q.heartbeat(client, stream_cfg, name, {"scored": 3, "dead_letters": 0})
    q.mark_stopped(client, stream_cfg, "done")
    client.expire(stream_cfg.heartbeat_prefix + "killed", stream_cfg.heartbeat_ttl_s - int(q.STALE_HEARTBEAT_S) - 5)
    opts = ["--redis", redis_server.url, "--stream", stream_cfg.stream, "--group", stream_cfg.group]
    status = json.loads(CliRunner().invoke(main, ["status", "--json", *opts]).stdout)
    assert list(status["workers"]) == ["alive"] and sorted(status["gone"]) == ["done", "killed"]
    text = CliRunner().invoke(main, ["status", *opts]).output
    assert "live workers: 1" in text and "gone done: stopped" in text and "gone killed: silent for 15" in text
    q.heartbeat(client, stream_cfg, "done", {"scored": 0})  # restarted under the same name: live again
    assert "done" in json.loads(CliRunner().invoke(main, ["status", "--json", *opts]).stdout)["workers"]


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(side).random((side, side, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_push_refuses_what_a_worker_could_not_score(redis_server, models_dir, payloads, stream_cfg, tmp_path):
    """Random bytes, truncated JPEG and PNG, a pixel bomb, a GIF: one line each, exit 2, only the good file
    pushed; with --models a product without a model pushes nothing; --no-check pushes everything."""
    files = tmp_path / "in"
    files.mkdir()
    gif = io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, "GIF")
    bad = {
        "random.png": (os.urandom(5000), "unsupported_format"),
        "truncated.jpg": (_jpeg(700)[:30_000], "decode_error"),
        "truncated.png": (payloads[0][: len(payloads[0]) // 2], "decode_error"),
        "bomb.png": (_png_header_bomb(20000, 20000), "too_large"),
        "animation.png": (gif.getvalue(), "unsupported_format"),
    }
    for name, (data, _) in bad.items():
        (files / name).write_bytes(data)
    (files / "good.png").write_bytes(payloads[0])
    client = q.connect(redis_server.url)
    opts = ["--redis", redis_server.url, "--stream", stream_cfg.stream]
    runner = CliRunner()
    res = runner.invoke(main, ["push", str(files), "--product", "synthetic", "--models", str(models_dir), *opts])
    assert res.exit_code == 2 and "pushed 1 images" in res.output and "refused 5" in res.output
    refused = re.findall(r"^refused \[(\w+)\] (\S+):", res.stderr, re.MULTILINE)  # one line each
    assert sorted((reason, Path(path).name) for reason, path in refused) == sorted(
        (reason, name) for name, (_, reason) in bad.items()
    ), res.stderr
    assert client.xlen(stream_cfg.stream) == 1
    res = runner.invoke(main, ["push", str(files / "good.png"), "--product", "nosuch", "--models", str(models_dir),
                               *opts])  # fmt: skip
    assert res.exit_code == 2 and "[unknown_product]" in res.stderr and "nothing pushed" in res.stderr
    assert client.xlen(stream_cfg.stream) == 1
    res = runner.invoke(main, ["push", str(files), "--product", "synthetic", "--no-check", *opts])
    assert res.exit_code == 0 and "pushed 6 images" in res.output
    assert client.xlen(stream_cfg.stream) == 7
