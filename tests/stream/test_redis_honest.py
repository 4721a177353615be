"""Redis, honestly: the documented ACL is the tested one, a refused MULTI applies nothing, a full Redis spills
dead letters to disk and frees its memory, no persistence is said aloud, a replica URL gives one line.

Each test starts its own redis-server (ACL users, maxmemory, replication are per server), on the default
stream names the ACL's ``~ear:*`` covers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from conftest import needs_redis

from ear_stream.cli import main
from ear_stream.io.results import read_results
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisServer
from ear_stream.stream.worker import Worker, WorkerConfig

pytestmark = needs_redis

#: 3 MB that start like a PNG and decode to nothing: big junk, a decode_error dead letter each
JUNK_BYTES = 3_000_000


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def good_dir(synthetic_root) -> Path:
    return synthetic_root / "synthetic" / "test" / "good"


def acl_user(server: RedisServer, name: str, *extra: str) -> str:
    """Create ``name`` with the documented rights (plus ``extra``); its URL."""
    q.connect(server.url).execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *q.ACL_RIGHTS.split(), *extra)
    return server.url.replace("redis://", f"redis://{name}:pw@")


def cfg_for(url: str, models_dir: Path, out: Path, scfg: q.StreamConfig, **kw) -> WorkerConfig:
    base = dict(redis_url=url, models_dir=models_dir, out_dir=out, stream=scfg, device="cpu", batch_size=8,
                flush_seconds=0.2, block_ms=100, claim_every_s=0.2, exit_when_idle_s=0.5)  # fmt: skip
    return WorkerConfig(**{**base, **kw})


def one_line(res) -> None:  # type: ignore[no-untyped-def]
    """A verb that failed as it should: exit 1, ``Error: …``, no traceback."""
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and "Traceback" not in res.output and res.exception.__class__ is SystemExit


# ----------------------------------------------------------------------------- the documented ACL


def test_the_documented_acl_is_the_one_the_error_message_names():
    message = str(q.permission_error(redis.exceptions.NoPermissionError("no"), "run XADD"))
    assert q.ACL_RIGHTS in message and q.ACL_SETUSER in message
    design = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    assert q.ACL_RIGHTS in " ".join(design.split())  # the docs show the same rights, word for word


def test_the_documented_acl_runs_every_verb(server, models_dir, good_dir, tmp_path):
    """Worker start-up and run, push, status, dlq list/replay/purge and the review station's queue status,
    all as a user with exactly the documented rights: no traceback anywhere."""
    url = acl_user(server, "ear")
    runner = CliRunner()
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    res = runner.invoke(main, ["push", str(good_dir), "--product", "synthetic", "--models", str(models_dir),
                               "--redis", url])  # fmt: skip
    assert res.exit_code == 0 and "pushed 6 images" in res.output, res.output
    res = runner.invoke(main, ["push", str(junk), "--product", "synthetic", "--no-check", "--redis", url])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = runner.invoke(main, ["worker", "--redis", url, "--models", str(models_dir), "--out", str(out),
                               "--device", "cpu", "--exit-when-idle", "0.5", "--flush-seconds", "0.2"])  # fmt: skip
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert read_results(out).num_rows == 6
    res = runner.invoke(main, ["status", "--redis", url])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "live workers: 0" in res.output and ": stopped; scored 6" in res.output  # its clean-exit marker
    res = runner.invoke(main, ["dlq", "list", "--redis", url])
    assert res.exit_code == 0 and "1 dead letters (decode_error 1)" in res.output, res.output
    res = runner.invoke(main, ["dlq", "replay", "--redis", url])
    assert res.exit_code == 0 and "replayed 1 entries" in res.output, res.output
    res = runner.invoke(main, ["worker", "--redis", url, "--models", str(models_dir), "--out", str(out),
                               "--device", "cpu", "--exit-when-idle", "0.3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["dlq", "purge", "--redis", url, "--reason", "decode_error"])
    assert res.exit_code == 0 and "purged 1" in res.output, res.output

    from ear_stream.review.app import Station
    from ear_stream.review.config import ReviewConfig

    queue = Station(ReviewConfig(results=out, redis_url=url)).queue_status()
    assert queue == {"length": 0, "dlq": 0, "pending": 0}, queue


def test_a_user_without_ping_gets_the_acl_in_one_line(server):
    url = acl_user(server, "noping", "-ping")
    res = CliRunner().invoke(main, ["status", "--redis", url])
    one_line(res)
    assert "may not run PING" in res.output and "ACL SETUSER" in res.output


# ----------------------------------------------------------------------------- refused transactions


def _pending_entry(client: redis.Redis, cfg: q.StreamConfig) -> q.Entry:
    q.ensure_group(client, cfg)
    q.push(client, "synthetic", b"\x89PNG junk", "victim", None, cfg)
    (entry,) = q.read_new(client, cfg, "w", 10, None)
    return entry


@pytest.mark.parametrize("cut", ["-multi", "-xadd"])
def test_a_refused_transaction_applies_nothing(server, cut):
    """MULTI refused (no +multi), or a command refused while queued (EXECABORT): the dead letter is not
    written and the entry is not acknowledged or deleted — redis-py's own pipeline would have run them."""
    cfg = q.StreamConfig()
    admin = q.connect(server.url)
    user = q.connect(acl_user(server, "cut", cut))
    entry = _pending_entry(admin, cfg)
    with pytest.raises(q.TransactionRefused, match="nothing was applied") as info:
        q.dead_letter(user, cfg, [q.Rejection(entry, "decode_error", "m")], "w")
    assert "ACL SETUSER" in str(info.value)
    assert admin.xlen(cfg.dlq) == 0 and admin.xlen(cfg.stream) == 1
    assert q.backlog(admin, cfg) == (0, 1)  # still pending, still there
    q.dead_letter(admin, cfg, [q.Rejection(entry, "decode_error", "m")], "w")
    assert admin.xlen(cfg.dlq) == 1 and admin.xlen(cfg.stream) == 0


def test_a_replay_without_multi_moves_nothing(server, models_dir, tmp_path):
    cfg = q.StreamConfig()
    admin = q.connect(server.url)
    q.dead_letter(admin, cfg, [q.Rejection(_pending_entry(admin, cfg), "unknown_product", "m")], "w")
    url = acl_user(server, "nomulti", "-multi")
    res = CliRunner().invoke(main, ["dlq", "replay", "--redis", url])
    one_line(res)
    assert "may not run MULTI" in res.output and "nothing was applied" in res.output
    assert admin.xlen(cfg.dlq) == 1 and admin.xlen(cfg.stream) == 0  # not replayed twice, not lost
    # the worker: a dead letter it cannot write in a transaction stops it in one line, the entry kept
    q.push(admin, "synthetic", b"\x89PNG junk", "junk-1", None, cfg)
    res = CliRunner().invoke(main, ["worker", "--redis", url, "--models", str(models_dir), "--out",
                                    str(tmp_path / "out"), "--device", "cpu", "--exit-when-idle", "0.3"])  # fmt: skip
    one_line(res)
    assert "MULTI" in res.output
    assert admin.xlen(cfg.dlq) == 1 and admin.xlen(cfg.stream) == 1


# ----------------------------------------------------------------------------- a full Redis


def _fill(server: RedisServer, cfg: q.StreamConfig, good: list[bytes], n_junk: int) -> tuple[redis.Redis, int]:
    """Good entries, ``n_junk`` 3 MB junk entries and 8 MB of ballast, then maxmemory set so that Redis stays
    full even once the junk is gone; returns (client, used_memory with everything in)."""
    client = q.connect(server.url)
    q.ensure_group(client, cfg)
    producer = q.connect(server.url)  # its 3 MB query buffer leaves with it
    for i, image in enumerate(good):
        q.push(producer, "synthetic", image, f"ok-{i}", None, cfg)
    for i in range(n_junk):
        q.push(producer, "synthetic", b"\x89PNG\r\n\x1a\n" + os.urandom(JUNK_BYTES), f"junk-{i}", None, cfg)
    producer.close()
    client.setrange("ballast", 8_000_000, b"x")  # a tiny command: no big query buffer to shrink later
    time.sleep(0.2)
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", used - n_junk * JUNK_BYTES - 2_000_000)
    return client, used


def _wait(condition, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_full_redis_spills_dead_letters_frees_memory_and_posts_them_later(server, models_dir, good_dir, tmp_path):
    cfg = q.StreamConfig()
    good = [p.read_bytes() for p in sorted(good_dir.glob("*.png"))[:5]]
    client, used_full = _fill(server, cfg, good, n_junk=4)
    out = tmp_path / "out"
    worker = Worker(cfg_for(server.url, models_dir, out, cfg, exit_when_idle_s=None))
    spill = q.DeadLetterSpill(q.default_spill_dir(out))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert _wait(lambda: q.backlog(client, cfg) == (0, 0) and worker.stats["scored"] == 5)
        # the junk was acknowledged and deleted once its letters were on disk: Redis' memory is free again
        assert client.xlen(cfg.stream) == 0 and spill.count() == 4 and worker.stats["dead_letters"] == 4
        assert _wait(lambda: client.info("memory")["used_memory"] < used_full - 3 * JUNK_BYTES, 10)
        time.sleep(1.5)  # still full: the letters wait on disk
        assert client.xlen(cfg.dlq) == 0 and thread.is_alive()
        client.config_set("maxmemory", 0)  # the operator gives Redis room: posted within a second or two
        assert _wait(lambda: client.xlen(cfg.dlq) == 4, 10)
        assert _wait(lambda: not spill.files(), 5)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    letters = [fields for _, fields in client.xrange(cfg.dlq)]
    assert sorted(f[b"orig_id"] for f in letters) == [f"junk-{i}".encode() for i in range(4)]
    assert {f[b"reason"] for f in letters} == {b"decode_error"}
    assert all(len(f[b"orig_image"]) == JUNK_BYTES + 8 for f in letters)  # the payload kept, for replay
    assert read_results(out).num_rows == 5


def test_spilled_dead_letters_survive_a_sigkill(server, models_dir, good_dir, tmp_path):
    cfg = q.StreamConfig()
    client, _ = _fill(server, cfg, [next(good_dir.glob("*.png")).read_bytes()], n_junk=3)
    out = tmp_path / "out"
    spill = q.DeadLetterSpill(q.default_spill_dir(out))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ear_stream.cli", "worker", "--redis", server.url, "--models", str(models_dir),
         "--out", str(out), "--device", "cpu", "--flush-seconds", "0.2", "--name", "victim"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert _wait(lambda: client.xlen(cfg.stream) == 0 and spill.count() == 3, 60), proc.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert client.xlen(cfg.dlq) == 0 and q.backlog(client, cfg) == (0, 0)  # only on the local disk now
    client.config_set("maxmemory", 0)
    Worker(cfg_for(server.url, models_dir, out, cfg, name="heir")).run()  # reads the spill back at start-up
    assert client.xlen(cfg.dlq) == 3 and not spill.files()


def test_a_spill_file_is_posted_once_by_one_of_two_workers(server, tmp_path):
    cfg = q.StreamConfig()
    client = q.connect(server.url)
    spill = q.DeadLetterSpill(tmp_path / "spill")
    spill.write(cfg.dlq, cfg.dlq_maxlen, [{"reason": "decode_error", "orig_id": b"x", "deliveries": 1}])
    (path,) = spill.files()
    import fcntl

    with open(path, "rb") as held:  # another worker is posting it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert spill.repost(client) == 0
    assert spill.repost(client) == 1 and spill.repost(client) == 0
    ((_, fields),) = client.xrange(cfg.dlq)
    assert fields == {b"reason": b"decode_error", b"orig_id": b"x", b"deliveries": b"1"}
    (tmp_path / "spill" / "0-broken.json").write_text("{")  # a damaged file is set aside, never deleted
    assert spill.repost(client) == 0 and (tmp_path / "spill" / "0-broken.corrupt").exists()


# ----------------------------------------------------------------------------- persistence and replicas


def test_no_persistence_is_warned_once_by_the_worker_and_status(server, models_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ear_stream.stream.worker"):
        Worker(cfg_for(server.url, models_dir, tmp_path / "out", q.StreamConfig(), exit_when_idle_s=0.1)).run()
    assert sum("keeps nothing on disk" in r.getMessage() for r in caplog.records) == 1
    res = CliRunner().invoke(main, ["status", "--redis", server.url])
    assert res.exit_code == 0 and res.stderr.count("keeps nothing on disk") == 1
    client = q.connect(server.url)
    client.config_set("appendonly", "yes")
    try:
        res = CliRunner().invoke(main, ["status", "--redis", server.url])
        assert res.exit_code == 0 and "keeps nothing on disk" not in res.stderr
    finally:
        client.config_set("appendonly", "no")  # a server rewriting its AOF is slow to stop


def test_a_replica_url_ends_in_one_line(server, models_dir, good_dir, tmp_path):
    with RedisServer() as replica:
        q.connect(replica.url).replicaof("127.0.0.1", server.port)  # read-only at once, before any sync
        for args in (
            ["worker", "--models", str(models_dir), "--out", str(tmp_path), "--device", "cpu", "--exit-when-idle",
             "0.1"],
            ["push", str(good_dir), "--product", "synthetic"],
            ["status"],
        ):  # fmt: skip
            res = CliRunner().invoke(main, [*args, "--redis", replica.url])
            one_line(res)
            assert "is a read-only replica; point at the primary" in res.output
            assert f"127.0.0.1:{server.port}" in res.output
        # a user that may not ask INFO meets the replica at its first write: the same line
        url = acl_user(replica, "noinfo", "-info")
        res = CliRunner().invoke(main, ["push", str(good_dir), "--product", "synthetic", "--redis", url])
        one_line(res)
        assert "is a read-only replica; point at the primary" in res.output
