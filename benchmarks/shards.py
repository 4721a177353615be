"""The queue layer with a null scorer: entries/s through 1 stream against 3 and 6 shards, on a loopback Redis
Cluster (3 primaries + 3 replicas, redis-server nodes started here), side by side in one run.

Per configuration: ``--producers`` processes push ``--n`` entries (1 KiB payloads, XADD with the producer's
validation, ``ShardedProducer`` round-robin), then one consumer process per shard (as many as the single
stream gets for ``shards=1``: they share its group) reads with XREADGROUP (COUNT 128) and acknowledges
each batch with the worker's ack-and-delete, no decoding or scoring. Push and drain rates are entries/s of
the whole configuration; what a plant needs is derived from them in BENCHMARKS.md.

    python benchmarks/shards.py --n 20000 --consumers 6
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisClusterServer
from ear_stream.stream.shards import make_producer

PAYLOAD = os.urandom(1024)


def _push(url: str, cfg: q.StreamConfig, ids: range) -> None:
    producer = make_producer(q.connect(url), cfg, max_backlog=10**9)  # the drain comes after: no backpressure
    for i in ids:
        producer.push("p", PAYLOAD, f"e{i}")


def _drain(url: str, lane: q.StreamConfig, name: str, total: int, done: mp.Value) -> None:  # type: ignore[valid-type]
    client = q.connect(url)
    while True:
        with done.get_lock():
            if done.value >= total:
                return
        entries = q.read_new(client, lane, name, 128, 50)
        if entries:
            q.ack(client, lane, [e.stream_id for e in entries])
            with done.get_lock():
                done.value += len(entries)


def run(url: str, shards: int, n: int, producers: int, consumers: int, tag: str) -> tuple[float, float]:
    cfg = q.StreamConfig(stream=f"bench:{tag}:in", dlq=f"bench:{tag}:dlq", group="g", shards=shards)
    client = q.connect(url)
    q.ensure_group(client, cfg)
    chunks = [range(i, n, producers) for i in range(producers)]
    t0 = time.perf_counter()
    procs = [mp.Process(target=_push, args=(url, cfg, chunk)) for chunk in chunks]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    push_rate = n / (time.perf_counter() - t0)
    lanes = cfg.lanes()
    done = mp.Value("l", 0)
    t0 = time.perf_counter()
    readers = [mp.Process(target=_drain, args=(url, lanes[i % len(lanes)], f"c{i}", n, done)) for i in range(consumers)]
    for p in readers:
        p.start()
    for p in readers:
        p.join()
    drain_rate = n / (time.perf_counter() - t0)
    assert q.backlog(client, cfg) == (0, 0)
    return push_rate, drain_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="entries per configuration")
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--consumers", type=int, default=6, help="consumer processes (spread over the shards)")
    args = p.parse_args()
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        print(
            f"{args.n} entries of 1 KiB, {args.producers} producer and {args.consumers} consumer processes, "
            f"loopback Redis Cluster 3+3 (redis-server {os.cpu_count()} CPUs shared with the clients)"
        )
        print(f"{'shards':>6} {'primaries used':>15} {'push entries/s':>15} {'drain entries/s':>16}")
        base = None
        for shards in (1, 3, 6):
            tag = f"s{shards}"
            cfg = q.StreamConfig(stream=f"bench:{tag}:in", shards=shards)
            used = len({cluster.primary_of(lane.stream).port for lane in cfg.lanes()})
            push, drain = run(cluster.url, shards, args.n, args.producers, args.consumers, tag)
            base = base or (push, drain)
            print(
                f"{shards:>6} {used:>15} {push:>15.0f} {drain:>16.0f}   "
                f"(x{push / base[0]:.2f} push, x{drain / base[1]:.2f} drain vs 1 stream)"
            )


if __name__ == "__main__":
    main()
