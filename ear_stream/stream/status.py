"""What ``status``, the supervisor and the start-up checks read: lengths, lag, pending, memory, eviction policy."""

from __future__ import annotations

import logging
from typing import Any

import redis

from .connection import RedisSetupError
from .protocol import STREAM_KEYS, StreamConfig, as_text

log = logging.getLogger("ear_stream.stream.status")


def stream_status(client: redis.Redis, cfg: StreamConfig) -> dict[str, Any]:
    """Stream length, group lag and pending, pending per consumer, DLQ size, live workers."""
    out: dict[str, Any] = {
        "stream": cfg.stream,
        "length": int(client.xlen(cfg.stream)),
        "dlq": int(client.xlen(cfg.dlq)),
        "lengths": stream_lengths(client, cfg),
        "redis": redis_memory(client),
    }
    group_info: dict[str, Any] = {}
    try:
        for g in client.xinfo_groups(cfg.stream):
            if as_text(g["name"]) == cfg.group:
                group_info = {"pending": int(g["pending"]), "lag": g.get("lag"), "consumers": int(g["consumers"])}
        consumers = client.xinfo_consumers(cfg.stream, cfg.group) if group_info else []
        group_info["per_consumer"] = {
            as_text(c["name"]): {"pending": int(c["pending"]), "idle_ms": int(c["idle"])} for c in consumers
        }
    except redis.ResponseError:
        group_info = {}
    out["group"] = {"name": cfg.group, **group_info}
    workers = {}
    for key in client.scan_iter(match=cfg.heartbeat_prefix + "*", count=100):
        name = as_text(key)[len(cfg.heartbeat_prefix) :]
        workers[name] = {as_text(k): as_text(v) for k, v in client.hgetall(key).items()}
    out["workers"] = workers
    return out


def redis_memory(client: redis.Redis) -> dict[str, Any]:
    """used_memory, maxmemory and maxmemory_policy from INFO memory (works where CONFIG is disabled)."""
    info = client.info("memory")
    return {
        "used_memory": int(info.get("used_memory", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "maxmemory_policy": str(info.get("maxmemory_policy", "unknown")),
    }


def check_eviction_policy(client: redis.Redis, allow_eviction: bool) -> dict[str, Any]:
    """Refuse a Redis that may evict keys: an eviction policy can drop the input stream itself, silently.

    Only ``noeviction`` makes a full Redis refuse writes (the producers then see an error and keep
    their images) instead of losing accepted ones. ``allow_eviction`` starts anyway, with a warning.
    """
    mem = redis_memory(client)
    policy = mem["maxmemory_policy"]
    if policy != "noeviction":
        message = (
            f"Redis maxmemory-policy is {policy!r}: when memory runs out it may evict {', '.join(STREAM_KEYS)} "
            "streams, i.e. lose accepted images. Set `CONFIG SET maxmemory-policy noeviction` (and persist it in "
            "redis.conf), or pass --allow-eviction to run anyway"
        )
        if not allow_eviction:
            raise RedisSetupError(message)
        log.warning("%s (--allow-eviction given)", message)
    return mem


def stream_lengths(client: redis.Redis, cfg: StreamConfig) -> dict[str, int]:
    """XLEN of the input, verdict and dead-letter streams (what holds memory)."""
    names = [cfg.stream, cfg.dlq] + ([cfg.results] if cfg.results else [])
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xlen(name)
    return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}


def backlog(client: redis.Redis, cfg: StreamConfig) -> tuple[int, int]:
    """(lag, pending) of the group: entries not yet delivered, and delivered but not acknowledged.

    One XINFO GROUPS call: workers and the supervisor ask this every few seconds, so it
    does not go through :func:`stream_status` (which also scans heartbeats and consumers).
    """
    try:
        groups = client.xinfo_groups(cfg.stream)
    except redis.ResponseError:  # no stream yet
        return 0, 0
    for g in groups:
        if as_text(g["name"]) == cfg.group:
            lag = g.get("lag")
            return (int(lag) if lag is not None else 0), int(g["pending"])
    return 0, 0
