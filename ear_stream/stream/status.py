"""What ``status``, the supervisor and the start-up checks read: lengths, lag, pending, memory, eviction policy."""

from __future__ import annotations

import logging
from typing import Any

import redis

from .connection import RedisSetupError, node_clients
from .protocol import RUNNING, STALE_HEARTBEAT_S, STOPPED, STREAM_KEYS, StreamConfig, as_text

log = logging.getLogger("ear_stream.stream.status")


def stream_status(client: redis.Redis, cfg: StreamConfig) -> dict[str, Any]:
    """Stream length, group lag and pending, pending per consumer, DLQ size, live workers, persistence.

    ``workers`` holds the live ones only; those that stopped cleanly or fell silent (no heartbeat for
    :data:`STALE_HEARTBEAT_S`: killed or stuck) are under ``gone``, until their heartbeat key expires.
    Each worker's figures are those of its last heartbeat, ``age_s`` old.
    """
    if cfg.shards > 1:
        return _sharded_status(client, cfg)
    out: dict[str, Any] = {
        "stream": cfg.stream,
        "length": int(client.xlen(cfg.stream)),
        "dlq": int(client.xlen(cfg.dlq)),
        "lengths": stream_lengths(client, cfg),
        "redis": redis_memory(client),
        "persistence_warning": check_persistence(client),
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
    out["workers"], out["gone"] = {}, {}
    for name, hb in heartbeats(client, cfg).items():
        out["workers" if worker_state(hb) == RUNNING else "gone"][name] = hb
    return out


def _sharded_status(client: redis.Redis, cfg: StreamConfig) -> dict[str, Any]:
    """:func:`stream_status` of every shard under ``shards``, and the pool's sums where a single stream's are."""
    shards = [stream_status(client, lane) for lane in cfg.lanes()]
    first = shards[0]
    groups = [sh["group"] for sh in shards]
    lags = [g.get("lag") for g in groups]
    out: dict[str, Any] = {
        "stream": cfg.stream,
        "length": sum(sh["length"] for sh in shards),
        "dlq": sum(sh["dlq"] for sh in shards),
        "lengths": {name: n for sh in shards for name, n in sh["lengths"].items()},
        "redis": first["redis"],
        "persistence_warning": first["persistence_warning"],
        "group": {
            "name": cfg.group,
            "pending": sum(int(g.get("pending", 0)) for g in groups),
            "lag": None if any(lag is None for lag in lags) else sum(int(lag) for lag in lags),
            "consumers": max((int(g.get("consumers", 0)) for g in groups), default=0),
            "per_consumer": {
                f"{consumer} [{sh['stream']}]": c
                for sh in shards
                for consumer, c in sh["group"].get("per_consumer", {}).items()
            },
        },
        "workers": {f"{name} [{sh['stream']}]": w for sh in shards for name, w in sh["workers"].items()},
        "gone": {f"{name} [{sh['stream']}]": w for sh in shards for name, w in sh["gone"].items()},
        "shards": {
            sh["stream"]: {
                "length": sh["length"],
                "dlq": sh["dlq"],
                "lag": sh["group"].get("lag"),
                "pending": sh["group"].get("pending", 0),
                "workers": len(sh["workers"]),
            }
            for sh in shards
        },
    }
    return out


def heartbeats(client: redis.Redis, cfg: StreamConfig) -> dict[str, dict[str, Any]]:
    """Every heartbeat of this pool, with ``age_s``: seconds since it was written, on the server's clock."""
    keys = list(client.scan_iter(match=cfg.heartbeat_prefix + "*", count=100))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
        pipe.pttl(key)
    replies = pipe.execute() if keys else []
    out: dict[str, dict[str, Any]] = {}
    for key, fields, pttl in zip(keys, replies[::2], replies[1::2], strict=True):
        if not fields:  # expired between SCAN and HGETALL
            continue
        hb: dict[str, Any] = {as_text(k): as_text(v) for k, v in fields.items()}
        hb["age_s"] = heartbeat_age_s(hb, int(pttl), cfg.heartbeat_ttl_s)
        out[as_text(key)[len(cfg.heartbeat_prefix) :]] = hb
    return out


def heartbeat_age_s(hb: dict[str, Any], pttl_ms: int, default_ttl_s: int) -> float | None:
    """How long ago the heartbeat was written: its TTL minus what is left of it (None without a TTL)."""
    if pttl_ms < 0:
        return None
    try:
        ttl_s = float(hb.get("ttl_s") or default_ttl_s)
    except ValueError:
        ttl_s = float(default_ttl_s)
    return round(max(0.0, ttl_s - pttl_ms / 1000.0), 1)


def worker_state(hb: dict[str, Any]) -> str:
    """``running`` (live), ``stopped`` (its clean-exit marker) or ``silent`` (no heartbeat for too long)."""
    if hb.get("state") == STOPPED:
        return STOPPED
    age = hb.get("age_s")
    return "silent" if age is not None and age > STALE_HEARTBEAT_S else RUNNING


def redis_memory(client: redis.Redis) -> dict[str, Any]:
    """used_memory, maxmemory and maxmemory_policy from INFO memory (works where CONFIG is disabled).

    On a Redis Cluster: the primaries' sums, and the policy when they agree (else the ones they have, joined).
    """
    infos = [node.info("memory") for node in node_clients(client)]
    policies = sorted({str(info.get("maxmemory_policy", "unknown")) for info in infos})
    return {
        "used_memory": sum(int(info.get("used_memory", 0)) for info in infos),
        "maxmemory": sum(int(info.get("maxmemory", 0)) for info in infos),
        "maxmemory_policy": policies[0] if len(policies) == 1 else "+".join(policies),
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


def check_persistence(client: redis.Redis) -> str | None:
    """A warning when the server keeps nothing on disk (``save ""`` and ``appendonly no``), else None.

    Such a Redis loses every unscored entry and every dead letter when it restarts, without a word
    (604 of 1,500 entries in one restart). Not fatal: a test bench may want exactly that. None as well
    where CONFIG GET is refused (managed services): they persist as their plan says.
    """
    for node in node_clients(client):  # on a Redis Cluster each primary keeps its own slots
        try:
            save = as_text(node.config_get("save").get("save")) or ""
            appendonly = as_text(node.config_get("appendonly").get("appendonly")) or "no"
        except redis.ResponseError:
            return None
        if not save.strip() and appendonly.strip().lower() == "no":
            break
    else:
        return None
    return (
        'Redis keeps nothing on disk (save "" and appendonly no): a restart silently loses every entry not yet '
        "scored and every dead letter. Turn on AOF: CONFIG SET appendonly yes (appendfsync everysec, or always "
        "to lose nothing acknowledged), and the same in redis.conf"
    )


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
    if cfg.shards > 1:  # the pool's backlog is its shards' together
        per_shard = [backlog(client, lane) for lane in cfg.lanes()]
        return sum(lag for lag, _ in per_shard), sum(pending for _, pending in per_shard)
    try:
        groups = client.xinfo_groups(cfg.stream)
    except redis.ResponseError:  # no stream yet
        return 0, 0
    for g in groups:
        if as_text(g["name"]) == cfg.group:
            lag = g.get("lag")
            return (int(lag) if lag is not None else 0), int(g["pending"])
    return 0, 0
