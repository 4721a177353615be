"""The worker side of the stream: the consumer group, reads and claims, dead letters, acknowledge-and-delete,
published verdicts and heartbeats (docs/design.md, "Redis protocol")."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import redis

from .connection import atomic, node_clients
from .protocol import RUNNING, STOPPED, Entry, Rejection, StreamConfig, as_text

log = logging.getLogger("ear_stream.stream.consumer")


def ensure_group(client: redis.Redis, cfg: StreamConfig) -> None:
    """Create the consumer group (and the stream) if needed; start from the beginning of the stream.

    Looked up first (a read): a full Redis refuses XGROUP CREATE even for a group that exists. With shards,
    on every shard's stream.
    """
    if cfg.shards > 1:
        for lane in cfg.lanes():
            ensure_group(client, lane)
        return
    try:
        if any(as_text(g["name"]) == cfg.group for g in client.xinfo_groups(cfg.stream)):
            return
    except redis.ResponseError:  # no such stream yet
        pass
    try:
        client.xgroup_create(cfg.stream, cfg.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _entries(raw: list) -> list[Entry]:
    out = []
    for sid, fields in raw:
        if fields is None:  # entry deleted while pending
            continue
        out.append(Entry(as_text(sid), {as_text(k): v for k, v in fields.items()}))
    return out


def read_new(client: redis.Redis, cfg: StreamConfig, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
    """New entries for this consumer (XREADGROUP ``>``)."""
    resp = client.xreadgroup(cfg.group, consumer, {cfg.stream: ">"}, count=count, block=block_ms)
    return _entries(resp[0][1]) if resp else []


def read_own_pending(
    client: redis.Redis, cfg: StreamConfig, consumer: str, count: int, after: str = "0"
) -> list[Entry]:
    """Entries delivered to this consumer name earlier but never acknowledged (a restart after a crash).

    ``after`` is the cursor: the last stream id returned by the previous call.
    """
    resp = client.xreadgroup(cfg.group, consumer, {cfg.stream: after}, count=count)
    entries = _entries(resp[0][1]) if resp else []
    return with_delivery_counts(client, cfg, entries)


def claim_idle(client: redis.Redis, cfg: StreamConfig, consumer: str, count: int) -> tuple[list[Entry], list[str]]:
    """XAUTOCLAIM entries idle longer than ``claim_idle_ms``; returns (entries, ids deleted while pending)."""
    resp = client.xautoclaim(cfg.stream, cfg.group, consumer, cfg.claim_idle_ms, start_id="0-0", count=count)
    deleted = [as_text(x) for x in resp[2]] if len(resp) > 2 else []
    return with_delivery_counts(client, cfg, _entries(resp[1])), deleted


def keep_claimed(client: redis.Redis, cfg: StreamConfig, consumer: str, ids: list[str]) -> None:
    """Reset the idle time of entries this consumer holds (XCLAIM … JUSTID), so that no other worker claims
    them while it waits for its results to be writable; JUSTID does not count a delivery."""
    if ids:
        client.xclaim(cfg.stream, cfg.group, consumer, 0, ids, justid=True)


def with_delivery_counts(client: redis.Redis, cfg: StreamConfig, entries: list[Entry]) -> list[Entry]:
    """Fill ``deliveries`` from XPENDING for claimed or re-read entries."""
    if not entries:
        return entries
    ids = sorted(entries, key=lambda e: tuple(int(p) for p in e.stream_id.split("-")))
    rows = client.xpending_range(cfg.stream, cfg.group, ids[0].stream_id, ids[-1].stream_id, len(entries) * 4 + 16)
    counts = {as_text(r["message_id"]): int(r["times_delivered"]) for r in rows}
    for e in entries:
        e.deliveries = counts.get(e.stream_id, e.deliveries)
    return entries


def letter_fields(cfg: StreamConfig, rejection: Rejection, worker: str) -> dict[str, Any]:
    """The fields of one dead letter: reason, message, where it came from, and the payload when it fits."""
    fields: dict[str, Any] = {
        "reason": rejection.reason,
        "message": rejection.message[:2000],
        "stream_id": rejection.entry.stream_id,
        "deliveries": rejection.entry.deliveries,
        "worker": worker,
        "failed_at": f"{time.time():.3f}",
    }
    for key, value in rejection.entry.fields.items():  # keep the payload for replay, bounded in size
        if len(value) <= cfg.max_image_bytes:
            fields[f"orig_{key}"] = value
    return fields


def xadd_letter(dlq: str, fields: dict[str, Any], maxlen: int) -> tuple[Any, ...]:
    """The raw XADD of one dead letter to the (approximately capped) dead-letter stream."""
    return ("XADD", dlq, "MAXLEN", "~", maxlen, "*", *(x for kv in fields.items() for x in kv))


def dead_letter(client: redis.Redis, cfg: StreamConfig, rejections: list[Rejection], worker: str) -> None:
    """XADD each rejection to the (capped) DLQ with its reason, then acknowledge and delete the originals.

    One MULTI/EXEC (:func:`~.connection.atomic`): either the dead letters exist and the originals are
    gone, or nothing happened — also when MULTI itself is refused. A full Redis refuses it with
    :class:`redis.OutOfMemoryError` (the worker then spills the letters to disk, :mod:`.spill`).
    """
    if not rejections:
        return
    commands = [xadd_letter(cfg.dlq, letter_fields(cfg, r, worker), cfg.dlq_maxlen) for r in rejections]
    commands.append(ack_delete_command(client, cfg, [r.entry.stream_id for r in rejections]))
    atomic(client, commands)


def post_letters(client: redis.Redis, dlq: str, letters: list[dict[str, Any]], maxlen: int) -> None:
    """XADD dead letters that were kept elsewhere (a spill) in one MULTI/EXEC: all of them or none."""
    if letters:
        atomic(client, [xadd_letter(dlq, fields, maxlen) for fields in letters])


def ack(client: redis.Redis, cfg: StreamConfig, stream_ids: list[str]) -> None:
    """Acknowledge entries whose results are durable, and delete them from the input stream in the same step.

    ``XACKDEL`` where the server has it (Redis ≥ 8.2, Valkey ≥ 9.2; detected once per client), else
    XACK + XDEL in one atomic script (``retain="acked"``: a script that deletes only the entries every
    group has acknowledged). Ids already acknowledged and deleted (a re-scored duplicate after a
    crash) are no-ops: nothing is deleted twice.
    """
    if not stream_ids:
        return
    # one command, not MULTI/EXEC: Redis refuses a transaction when memory is full, while XACK, XDEL and a
    # script made of them still run, and acknowledging is what frees the memory (docs/design.md, "Redis full")
    client.execute_command(*ack_delete_command(client, cfg, stream_ids))


def server_has_xackdel(client: redis.Redis) -> bool:
    """Whether the server runs XACKDEL (Redis 8.2+, Valkey 9.2+); asked once per client.

    Asked by running it against a key that does not exist: an older server answers "unknown
    command", a newer one anything else (redis-py cannot parse COMMAND INFO for unknown commands).
    """
    cached = getattr(client, "_ear_has_xackdel", None)
    if cached is None:
        try:  # on a Redis Cluster, any primary answers for the servers (they run one version)
            node_clients(client)[0].execute_command("XACKDEL", "ear:xackdel-probe:none", "g", "IDS", 1, "0-1")
            cached = True
        except redis.ResponseError as exc:
            text = str(exc).lower()
            cached = "unknown command" not in text and "noperm" not in text
        client._ear_has_xackdel = cached  # type: ignore[attr-defined]
    return cached


#: retain="acked" without XACKDEL: XACK, then XDEL only the ids that every group has read and acknowledged
_ACK_DELETE_ACKED = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local function split(id) local a, b = string.match(id, '(%d+)-(%d+)') return tonumber(a), tonumber(b) end
local function le(x, y) local a1, b1 = split(x) local a2, b2 = split(y) return a1 < a2 or (a1 == a2 and b1 <= b2) end
local deleted = 0
for i = 2, #ARGV do
  local id, free = ARGV[i], true
  for _, g in ipairs(groups) do
    local info = {}
    for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
    if not le(id, info['last-delivered-id']) or #redis.call('XPENDING', KEYS[1], info['name'], id, id, 1) > 0 then
      free = false
      break
    end
  end
  if free then deleted = deleted + redis.call('XDEL', KEYS[1], id) end
end
return {acked, deleted}
"""


#: retain="none" without XACKDEL: XACK + XDEL atomically (a script, not MULTI: it runs when memory is full)
_ACK_DELETE = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local deleted = redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return {acked, deleted}
"""


def ack_delete_command(client: redis.Redis, cfg: StreamConfig, ids: list[str]) -> tuple[Any, ...]:
    """The one raw command that acknowledges ``ids`` and deletes them as ``cfg.retain`` says."""
    if server_has_xackdel(client):
        policy = "ACKED" if cfg.retain == "acked" else "KEEPREF"
        return ("XACKDEL", cfg.stream, cfg.group, policy, "IDS", len(ids), *ids)
    script = _ACK_DELETE_ACKED if cfg.retain == "acked" else _ACK_DELETE
    return ("EVAL", script, 1, cfg.stream, cfg.group, *ids)


def _largest_box(regions: list[dict[str, Any]] | None) -> str:
    """``x0,y0,x1,y1`` of the largest region in original pixels, or empty."""
    if not regions:
        return ""
    r = max(regions, key=lambda r: r["area"])
    return f"{r['x0']},{r['y0']},{r['x1']},{r['y1']}"


def publish_results(client: redis.Redis, cfg: StreamConfig, rows: list[dict[str, Any]]) -> None:
    """Optional result stream (capped, approximate MAXLEN): id, product, score, verdict per row, and where
    the line kept the image (``image_uri``, with ``--keep-images``) so that a consumer can show it."""
    if not cfg.results or not rows:
        return
    pipe = client.pipeline(transaction=False)
    for row in rows:
        fields = {
            "id": row["id"],
            "product": row["product"],
            "score": f"{row['score']:.6g}",
            "verdict": "anomaly" if row["is_anomaly"] else "ok",
            "stream_id": row["stream_id"] or "",
            "n_regions": str(row.get("n_regions") or 0),
            "largest_box": _largest_box(row.get("regions")),
        }
        if row.get("image_uri"):
            fields["image_uri"] = row["image_uri"]
        pipe.xadd(cfg.results, fields, maxlen=cfg.results_maxlen, approximate=True)
    pipe.execute()


def heartbeat(client: redis.Redis, cfg: StreamConfig, worker: str, stats: dict[str, Any]) -> None:
    """The worker's hash for ``status``, expiring after ``heartbeat_ttl_s``.

    ``ttl_s`` is written with it so that ``status`` reads a heartbeat's age from the key's remaining TTL,
    on the server's clock: a worker on a host whose clock is off is neither dropped nor kept by mistake.
    """
    key = cfg.heartbeat_prefix + worker
    payload = {
        "host": socket.gethostname(),
        "last_seen": f"{time.time():.3f}",
        "ttl_s": str(cfg.heartbeat_ttl_s),
        "state": RUNNING,
        **{k: str(v) for k, v in stats.items()},
    }
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=payload)
    pipe.expire(key, cfg.heartbeat_ttl_s)
    pipe.execute()


def mark_stopped(client: redis.Redis, cfg: StreamConfig, worker: str) -> None:
    """The clean-exit marker, written once a worker has left: ``status`` lists it as gone at once instead of
    once its heartbeat is stale; a worker restarted under the same name beats ``running`` again.

    Nothing is written for a worker that never beat (or whose heartbeat expired already); the key gets its
    TTL again: a marker is never left behind for ever.
    """
    key = cfg.heartbeat_prefix + worker
    if client.pttl(key) == -2:  # no such key
        return
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, "state", STOPPED)
    pipe.expire(key, cfg.heartbeat_ttl_s)
    pipe.execute()


def consumer_pending(client: redis.Redis, cfg: StreamConfig, consumer: str) -> int:
    """Entries delivered to ``consumer`` and not yet acknowledged (0 when it is unknown)."""
    try:
        for c in client.xinfo_consumers(cfg.stream, cfg.group):
            if as_text(c["name"]) == consumer:
                return int(c["pending"])
    except redis.ResponseError:  # no stream or group yet
        return 0
    return 0
