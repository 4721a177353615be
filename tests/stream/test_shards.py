"""Sharded streams (docs/design.md, "Shards"): N stream keys under hash tags, on one Redis and on a real
Redis Cluster (3 primaries, 3 replicas, redis-server nodes on loopback).

``push --shards`` spreads entries (round-robin or by product), a worker reads every shard it owns (one
loop each), ``status`` sums and lists per shard, dead letters stay beside their shard and ``dlq replay``
puts them back there; on the cluster a primary is SIGKILLed mid-run, its replica is promoted, and every
entry pushed (each acknowledged by a replica, ``--wait-replicas 1``) gets its row: nothing lost.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import needs_redis

from ear_stream.cli import main
from ear_stream.io.results import read_results
from ear_stream.stream import dlq as dlq_tools
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisClusterServer
from ear_stream.stream.shards import ShardedProducer, ShardedWorker, make_worker, shard_of_product
from ear_stream.stream.worker import WorkerConfig


@pytest.fixture(scope="module")
def images(synthetic_root) -> list[Path]:
    return sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))


def worker_cfg(url: str, models_dir, scfg: q.StreamConfig, out: Path, **extra) -> WorkerConfig:  # type: ignore[no-untyped-def]
    return WorkerConfig(
        redis_url=url,
        models_dir=models_dir,
        out_dir=out,
        stream=scfg,
        device="cpu",
        batch_size=4,
        flush_rows=4,
        flush_seconds=0.2,
        block_ms=100,
        claim_every_s=0.5,
        exit_when_idle_s=1.5,
        **extra,
    )


def sharded(stream_cfg: q.StreamConfig, n: int) -> q.StreamConfig:
    return q.StreamConfig(stream=stream_cfg.stream, group="g", dlq=stream_cfg.dlq, shards=n, claim_idle_ms=500)


def test_shard_keys_share_a_hash_tag_with_their_dead_letters():
    cfg = q.StreamConfig(shards=3)
    assert [(x.stream, x.dlq, x.shard) for x in cfg.lanes()] == [
        ("ear:in:{0}", "ear:dlq:{0}", 0),
        ("ear:in:{1}", "ear:dlq:{1}", 1),
        ("ear:in:{2}", "ear:dlq:{2}", 2),
    ]
    assert q.StreamConfig().lanes() == [q.StreamConfig()]  # one stream: today's names, unchanged
    assert [x.shard for x in cfg.lanes([2, 0])] == [2, 0]
    with pytest.raises(ValueError, match="shards must be"):
        q.StreamConfig(shards=0)


@needs_redis
def test_push_spreads_a_worker_reads_every_shard_and_status_sums(
    redis_server, models_dir, stream_cfg, images, tmp_path
):
    client = q.connect(redis_server.url)
    cfg = sharded(stream_cfg, 3)
    names = ["--stream", cfg.stream, "--dlq", cfg.dlq, "--group", "g", "--shards", "3"]
    result = CliRunner().invoke(
        main, ["push", *map(str, images[:12]), "--redis", redis_server.url, "--product", "synthetic", *names]
    )
    assert result.exit_code == 0, result.output
    assert [client.xlen(lane.stream) for lane in cfg.lanes()] == [4, 4, 4]  # round-robin
    q.ensure_group(client, cfg)
    status = json.loads(CliRunner().invoke(main, ["status", "--redis", redis_server.url, "--json", *names]).stdout)
    assert status["length"] == 12 and status["group"]["lag"] == 12
    assert {k: v["length"] for k, v in status["shards"].items()} == {lane.stream: 4 for lane in cfg.lanes()}

    out = tmp_path / "out"
    worker = make_worker(worker_cfg(redis_server.url, models_dir, cfg, out, name="w"))
    assert isinstance(worker, ShardedWorker) and len(worker.lanes) == 3
    stats = worker.run()
    assert stats["scored"] == 12 and read_results(out).num_rows == 12
    assert q.backlog(client, cfg) == (0, 0)
    assert sorted(read_results(out)["worker"].unique().to_pylist()) == ["w-s0", "w-s1", "w-s2"]


@needs_redis
def test_workers_owning_disjoint_shards_score_everything_once(redis_server, models_dir, stream_cfg, images, tmp_path):
    client = q.connect(redis_server.url)
    cfg = sharded(stream_cfg, 4)
    producer = ShardedProducer(client, cfg, spread="product")
    for i, path in enumerate(images[:8]):
        producer.push("synthetic", path.read_bytes(), f"p{i}")
    home = shard_of_product("synthetic", 4)
    assert [client.xlen(lane.stream) for lane in cfg.lanes()] == [8 if k == home else 0 for k in range(4)]
    for i, path in enumerate(images[:8]):  # and in turn, so every shard has entries
        ShardedProducer(client, cfg).push("synthetic", path.read_bytes(), f"r{i}")
    out = tmp_path / "out"
    a = ShardedWorker(worker_cfg(redis_server.url, models_dir, cfg, out, name="a", own_shards=[0, 1]))
    b = ShardedWorker(worker_cfg(redis_server.url, models_dir, cfg, out, name="b", own_shards=[2, 3]))
    threads = [threading.Thread(target=w.run) for w in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    table = read_results(out)
    assert sorted(table["id"].to_pylist()) == sorted([f"p{i}" for i in range(8)] + [f"r{i}" for i in range(8)])
    assert q.backlog(client, cfg) == (0, 0)


@needs_redis
def test_dead_letters_stay_with_their_shard_and_replay_there(redis_server, models_dir, stream_cfg, images, tmp_path):
    client = q.connect(redis_server.url)
    cfg = sharded(stream_cfg, 2)
    producer = ShardedProducer(client, cfg)
    producer.push("synthetic", images[0].read_bytes(), "good0")
    producer.push("nosuchproduct", images[1].read_bytes(), "lost1")  # shard 1 (round-robin)
    out = tmp_path / "out"
    ShardedWorker(worker_cfg(redis_server.url, models_dir, cfg, out, name="w")).run()
    assert [client.xlen(lane.dlq) for lane in cfg.lanes()] == [0, 1]
    letters = list(dlq_tools.iter_dead_letters(client, cfg, reason="unknown_product"))
    assert [(x.id, x.shard) for x in letters] == [("lost1", 1)]
    assert dlq_tools.replay(client, cfg, letters) == (1, [])
    assert [client.xlen(lane.stream) for lane in cfg.lanes()] == [0, 1]  # back on its own shard
    assert [client.xlen(lane.dlq) for lane in cfg.lanes()] == [0, 0]


@pytest.fixture(scope="module")
def redis_cluster():
    with RedisClusterServer(primaries=3, replicas=1, node_timeout_ms=1000) as cluster:
        yield cluster


@needs_redis
def test_a_redis_cluster_spreads_shards_over_its_primaries(redis_cluster, stream_cfg):
    client = q.connect(redis_cluster.url, verify=True)
    assert q.is_cluster(client)
    cfg = sharded(stream_cfg, 6)
    primaries = {redis_cluster.primary_of(lane.stream).port for lane in cfg.lanes()}
    assert len(primaries) >= 2  # one stream key was one primary; six shards use several
    q.ensure_group(client, cfg)
    producer = ShardedProducer(client, cfg, replicas=1)
    for i in range(12):
        producer.push("synthetic", b"not an image", f"x{i}")
    assert q.backlog(client, cfg) == (12, 0)
    st = q.stream_status(client, cfg)
    assert st["length"] == 12 and len(st["shards"]) == 6


@needs_redis
def test_one_stream_on_a_cluster_is_refused_when_its_dead_letters_are_another_slot(redis_cluster, models_dir, tmp_path):
    cfg = q.StreamConfig(stream="ear:in", dlq="ear:dlq")  # slots 15927 and 10776: dead letter + ack cannot be one step
    worker = make_worker(worker_cfg(redis_cluster.url, models_dir, cfg, tmp_path / "out", name="w"))
    with pytest.raises(q.RedisSetupError, match="must share a slot"):
        worker.run()
    tagged = q.StreamConfig(stream="ear:{line3}:in", dlq="ear:{line3}:dlq")
    q.check_same_slot(q.connect(redis_cluster.url), tagged.stream, tagged.dlq)  # one tag: accepted


@needs_redis
def test_failover_of_a_primary_mid_run_loses_nothing(redis_cluster, models_dir, stream_cfg, images, tmp_path):
    client = q.connect(redis_cluster.url, verify=True)
    cfg = sharded(stream_cfg, 3)
    names = ["--stream", cfg.stream, "--dlq", cfg.dlq, "--group", "g", "--shards", "3", "--wait-replicas", "1"]
    paths = [str(p) for p in images] * 2
    result = CliRunner().invoke(
        main, ["push", *paths, "--redis", redis_cluster.url, "--product", "synthetic", "--id-prefix", "f/", *names]
    )
    assert result.exit_code == 0, result.output
    pushed = sum(client.xlen(lane.stream) for lane in cfg.lanes())
    out = tmp_path / "out"
    wcfg = worker_cfg(redis_cluster.url, models_dir, cfg, out, name="w")
    wcfg.exit_when_idle_s = 4.0
    worker = ShardedWorker(wcfg)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 60
    while worker.stats.get("scored", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = redis_cluster.primary_of(cfg.lane(0).stream)
    victim.proc.kill()  # SIGKILL mid-run: its replica must take over shard 0
    victim.proc.wait()
    deadline = time.monotonic() + 60  # the others mark it failed after the node timeout, then its replica is elected
    while redis_cluster.primary_of(cfg.lane(0).stream).port == victim.port and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis_cluster.primary_of(cfg.lane(0).stream).port != victim.port
    redis_cluster.wait_healthy(60)
    thread.join(180)
    assert not thread.is_alive()
    ids = set(read_results(out)["id"].to_pylist())  # read_results drops the duplicates at-least-once allows
    assert ids == {f"f/{p}" for p in set(paths)} and pushed == len(set(paths))  # push reads each file once
    survivor = q.connect(redis_cluster.url if victim.port != redis_cluster.nodes[0].port else redis_cluster._live().url)
    assert q.backlog(survivor, cfg) == (0, 0)
    assert sum(survivor.xlen(lane.dlq) for lane in cfg.lanes()) == 0
