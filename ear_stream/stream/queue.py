"""Redis Streams protocol of docs/design.md: producer, consumer group, claims, dead letters, status.

Entries of the input stream carry ``id`` (producer-unique), ``product``,
``image`` (encoded bytes) and optional ``meta`` (JSON). Workers read them with
XREADGROUP, reclaim idle ones with XAUTOCLAIM, dead-letter what cannot be
processed (with a reason) and XACK only after the rows are durably on disk —
see :mod:`ear_stream.stream.worker`. Values are bytes or JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from ..errors import EarStreamError, SetupError
from .protocol import (  # noqa: F401 - the protocol's names, re-exported: q.StreamConfig, q.DECODE_ERROR, …
    DECODE_ERROR,
    DEFAULT_MAX_IMAGE_BYTES,
    INVALID_FIELD,
    MAX_DELIVERIES,
    MAX_ID_BYTES,
    MAX_META_BYTES,
    MODEL_ERROR,
    NON_FINITE_SCORE,
    PRODUCT_RE,
    RETAIN_CHOICES,
    STREAM_KEYS,
    TOO_LARGE,
    TOO_SMALL,
    UNKNOWN_PRODUCT,
    UNSUPPORTED_FORMAT,
    DeadLetter,
    Entry,
    Rejection,
    StreamConfig,
    ValidationError,
    ValidEntry,
    check_product,
)

log = logging.getLogger("ear_stream.stream.queue")


class RedisSetupError(SetupError):
    """Redis cannot be used as configured (unreachable, wrong or missing password): retrying will not fix it."""


def describe_url(url: str) -> str:
    """host:port/db of a Redis URL, never the password (for messages and logs)."""
    from urllib.parse import urlparse

    try:
        u = urlparse(url)
        return f"{u.scheme}://{u.hostname or 'localhost'}:{u.port or 6379}{u.path or '/0'}"
    except ValueError:
        return "the Redis URL"


_SPECIAL = "percent-encode / # ? @ in the password (%2F %23 %3F %40)"


def check_url(url: str) -> None:
    """Refuse a Redis URL that would be misread, before anything connects (messages never show the password).

    A password with ``/``, ``#`` or ``?`` unencoded moves part of it into the path, fragment or query,
    and the client would then connect somewhere else with a piece of the password as host or database.
    """
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        raise RedisSetupError(f"a Redis URL starts with redis://, rediss:// or unix://, not {u.scheme or 'nothing'}://")
    if u.fragment or "@" in u.path or "@" in u.query:
        raise RedisSetupError(f"the Redis URL cannot be read as host, port and database: {_SPECIAL}")
    if u.scheme != "unix" and u.path not in ("", "/") and not u.path[1:].isdigit():
        raise RedisSetupError(f"the Redis URL's database must be a number (/0); if the password has /, {_SPECIAL}")
    try:
        u.port  # noqa: B018 - raises for a port outside 0..65535
    except ValueError:
        raise RedisSetupError(f"the Redis URL's port is not a number in 1..65535 ({describe_url(url)})") from None


def connect(url: str, verify: bool = False, **kwargs: Any) -> redis.Redis:
    """A client from a ``redis://`` or ``rediss://`` URL (password and TLS options in the URL).

    ``verify`` pings once and turns the two set-up mistakes, an unreachable
    server and refused credentials, into :class:`RedisSetupError` with the fix.
    """
    check_url(url)
    options = {"socket_timeout": 30, "socket_connect_timeout": 5, "health_check_interval": 15, **kwargs}
    try:
        client = redis.Redis.from_url(url, **options)
    except ValueError as exc:  # redis-py's message may quote the URL: say what is wrong without it
        raise RedisSetupError(f"{describe_url(url)} is not a usable Redis URL ({type(exc).__name__})") from None
    if verify:
        verify_connection(client, url)
    return client


def verify_connection(client: redis.Redis, url: str) -> None:
    where = describe_url(url)
    try:
        client.ping()
    except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError) as exc:
        raise RedisSetupError(
            f"Redis at {where} refused the credentials ({exc}): put the right password in the URL "
            f"(redis://:PASSWORD@host:port/0) or in EAR_REDIS_URL"
        ) from exc
    except redis.ResponseError as exc:
        if "auth" not in str(exc).lower():
            raise
        raise RedisSetupError(f"Redis at {where} needs a password ({exc}): redis://:PASSWORD@host:port/0") from exc
    except ValueError as exc:
        raise RedisSetupError(f"{where} is not a usable Redis URL ({type(exc).__name__})") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisSetupError(
            f"cannot reach Redis at {where} ({exc}): start redis-server there or correct --redis / EAR_REDIS_URL"
        ) from exc


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else value


def validate_fields(product: str, ident: str, image: bytes, meta: str | None, max_image_bytes: int) -> None:
    """The producer-side and worker-side checks of one entry's fields."""
    if not ident or len(ident.encode()) > MAX_ID_BYTES:
        raise ValidationError(INVALID_FIELD, f"id must be 1..{MAX_ID_BYTES} bytes")
    check_product(product)
    if not image:
        raise ValidationError(DECODE_ERROR, "image field is empty")
    if len(image) > max_image_bytes:
        raise ValidationError(TOO_LARGE, f"image is {len(image)} bytes, limit is {max_image_bytes}")
    if meta is not None:
        if len(meta.encode()) > MAX_META_BYTES:
            raise ValidationError(INVALID_FIELD, f"meta is larger than {MAX_META_BYTES} bytes")
        try:
            json.loads(meta)
        except ValueError as exc:
            raise ValidationError(INVALID_FIELD, f"meta is not JSON: {exc}") from exc


def parse_entry(entry: Entry, max_image_bytes: int) -> ValidEntry:
    """Check the fields of a delivered entry; raises :class:`ValidationError` with a DLQ reason."""
    f = entry.fields
    missing = [k for k in ("id", "product", "image") if k not in f]
    if missing:
        raise ValidationError(INVALID_FIELD, f"missing field(s): {', '.join(missing)}")
    try:
        ident, product = _text(f["id"]), _text(f["product"])
        meta = _text(f.get("meta"))
    except UnicodeDecodeError as exc:
        raise ValidationError(INVALID_FIELD, f"id, product and meta must be UTF-8: {exc}") from exc
    validate_fields(product, ident, f["image"], meta, max_image_bytes)
    return ValidEntry(entry, ident, product, f["image"], meta)


# --------------------------------------------------------------------------- producer
def push(
    client: redis.Redis,
    product: str,
    image: bytes,
    ident: str,
    meta: dict[str, Any] | str | None = None,
    cfg: StreamConfig | None = None,
) -> str:
    """Validate and XADD one image; returns the stream id. Never trims: see :class:`Producer` for backpressure."""
    cfg = cfg or StreamConfig()
    meta_text = json.dumps(meta) if isinstance(meta, dict) else meta
    validate_fields(product, ident, image, meta_text, cfg.max_image_bytes)
    fields: dict[str, Any] = {"id": ident, "product": product, "image": image}
    if meta_text is not None:
        fields["meta"] = meta_text
    return _text(client.xadd(cfg.stream, fields))


class BackpressureError(EarStreamError, RuntimeError):
    """The input stream's backlog stayed above the producer's limit for its whole wait: workers are behind."""


@dataclass
class Producer:
    """What a plant backend uses to push images: validation, and backpressure instead of silent loss.

    Before each XADD the producer makes sure the backlog — ``XLEN`` of the input
    stream, which with deletion on is exactly the entries not yet scored (lag +
    pending) — is below ``max_backlog``. When it is not, it waits with
    exponential backoff up to ``wait_timeout_s``, then raises
    :class:`BackpressureError`; nothing is ever trimmed. XLEN is O(1); it is asked
    at most every ``check_every_s`` while there is room to spare.

        producer = Producer(q.connect("redis://…"), StreamConfig(), max_backlog=10_000)
        producer.push("bracket", png_bytes, "line3-000123", {"station": 3})
    """

    client: redis.Redis
    cfg: StreamConfig = field(default_factory=StreamConfig)
    max_backlog: int = 10_000
    wait_timeout_s: float = 30.0
    check_every_s: float = 0.1
    waited_s: float = 0.0  # total time spent waiting for room (a metric for the caller)
    _room: int = 0
    _checked_at: float = -1e9

    def push(self, product: str, image: bytes, ident: str, meta: dict[str, Any] | str | None = None) -> str:
        self.wait_for_room()
        sid = push(self.client, product, image, ident, meta, self.cfg)
        self._room -= 1
        return sid

    def backlog(self) -> int:
        return int(self.client.xlen(self.cfg.stream))

    def wait_for_room(self) -> None:
        now = time.monotonic()
        if self._room > 0 and now - self._checked_at < self.check_every_s:
            return
        started, delay = now, 0.02
        while True:
            backlog = self.backlog()
            self._checked_at = time.monotonic()
            self._room = self.max_backlog - backlog
            if self._room > 0:
                self.waited_s += self._checked_at - started
                return
            if self._checked_at - started >= self.wait_timeout_s:
                self.waited_s += self._checked_at - started
                raise BackpressureError(
                    f"{self.cfg.stream} holds {backlog} unscored entries (limit {self.max_backlog}) and did not "
                    f"drain for {self.wait_timeout_s:g}s: the workers are behind or stopped (ear-stream status); "
                    "add workers, or raise --max-backlog if Redis has the memory"
                )
            time.sleep(min(delay, max(0.0, started + self.wait_timeout_s - self._checked_at)))
            delay = min(delay * 2, 1.0)


# --------------------------------------------------------------------------- consumer side
def permission_error(exc: redis.ResponseError, what: str) -> RedisSetupError:
    """An ACL refusal (NOPERM) as a set-up error that says which rights the worker's user needs."""
    return RedisSetupError(
        f"the Redis user may not {what} ({exc}): grant it the stream commands, e.g. "
        "ACL SETUSER <user> +@stream +@read +@write +eval +evalsha +info +config|get ~ear:*"
    )


def ensure_group(client: redis.Redis, cfg: StreamConfig) -> None:
    """Create the consumer group (and the stream) if needed; start from the beginning of the stream.

    Looked up first (a read): a full Redis refuses XGROUP CREATE even for a group that exists.
    """
    try:
        if any(_text(g["name"]) == cfg.group for g in client.xinfo_groups(cfg.stream)):
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
        out.append(Entry(_text(sid), {_text(k): v for k, v in fields.items()}))
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
    deleted = [_text(x) for x in resp[2]] if len(resp) > 2 else []
    return with_delivery_counts(client, cfg, _entries(resp[1])), deleted


def with_delivery_counts(client: redis.Redis, cfg: StreamConfig, entries: list[Entry]) -> list[Entry]:
    """Fill ``deliveries`` from XPENDING for claimed or re-read entries."""
    if not entries:
        return entries
    ids = sorted(entries, key=lambda e: tuple(int(p) for p in e.stream_id.split("-")))
    rows = client.xpending_range(cfg.stream, cfg.group, ids[0].stream_id, ids[-1].stream_id, len(entries) * 4 + 16)
    counts = {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}
    for e in entries:
        e.deliveries = counts.get(e.stream_id, e.deliveries)
    return entries


def dead_letter(client: redis.Redis, cfg: StreamConfig, rejections: list[Rejection], worker: str) -> None:
    """XADD each rejection to the (capped) DLQ with its reason, then acknowledge and delete the originals.

    One MULTI/EXEC: either the dead letters exist and the originals are gone, or nothing happened.
    """
    if not rejections:
        return
    pipe = client.pipeline(transaction=True)
    for r in rejections:
        fields: dict[str, Any] = {
            "reason": r.reason,
            "message": r.message[:2000],
            "stream_id": r.entry.stream_id,
            "deliveries": r.entry.deliveries,
            "worker": worker,
            "failed_at": f"{time.time():.3f}",
        }
        for key, value in r.entry.fields.items():  # keep the payload for replay, bounded in size
            if len(value) <= cfg.max_image_bytes:
                fields[f"orig_{key}"] = value
        pipe.xadd(cfg.dlq, fields, maxlen=cfg.dlq_maxlen, approximate=True)
    _queue_ack_delete(client, pipe, cfg, [r.entry.stream_id for r in rejections])
    pipe.execute()


def ack(client: redis.Redis, cfg: StreamConfig, stream_ids: list[str]) -> None:
    """Acknowledge entries whose results are durable, and delete them from the input stream in the same step.

    ``XACKDEL`` where the server has it (Redis ≥ 8.2, Valkey ≥ 9.2; detected once per client), else
    XACK + XDEL in one atomic script (``retain="acked"``: a script that deletes only the entries every
    group has acknowledged). Ids already acknowledged and deleted (a re-scored duplicate after a
    crash) are no-ops: nothing is deleted twice.
    """
    if not stream_ids:
        return
    # not MULTI/EXEC: Redis refuses a transaction when memory is full, while XACK, XDEL and a script
    # made of them still run, and acknowledging is what frees the memory (docs/design.md, "Redis full")
    pipe = client.pipeline(transaction=False)
    _queue_ack_delete(client, pipe, cfg, stream_ids)
    pipe.execute()


def server_has_xackdel(client: redis.Redis) -> bool:
    """Whether the server runs XACKDEL (Redis 8.2+, Valkey 9.2+); asked once per client.

    Asked by running it against a key that does not exist: an older server answers "unknown
    command", a newer one anything else (redis-py cannot parse COMMAND INFO for unknown commands).
    """
    cached = getattr(client, "_ear_has_xackdel", None)
    if cached is None:
        try:
            client.execute_command("XACKDEL", "ear:xackdel-probe:none", "g", "IDS", 1, "0-1")
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


def _queue_ack_delete(client: redis.Redis, pipe, cfg: StreamConfig, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    if server_has_xackdel(client):
        policy = "ACKED" if cfg.retain == "acked" else "KEEPREF"
        pipe.xackdel(cfg.stream, cfg.group, *ids, ref_policy=policy)
    elif cfg.retain == "acked":
        pipe.eval(_ACK_DELETE_ACKED, 1, cfg.stream, cfg.group, *ids)
    else:
        pipe.eval(_ACK_DELETE, 1, cfg.stream, cfg.group, *ids)


def _largest_box(regions: list[dict[str, Any]] | None) -> str:
    """``x0,y0,x1,y1`` of the largest region in original pixels, or empty."""
    if not regions:
        return ""
    r = max(regions, key=lambda r: r["area"])
    return f"{r['x0']},{r['y0']},{r['x1']},{r['y1']}"


def publish_results(client: redis.Redis, cfg: StreamConfig, rows: list[dict[str, Any]]) -> None:
    """Optional result stream (capped, approximate MAXLEN): id, product, score, verdict per row."""
    if not cfg.results or not rows:
        return
    pipe = client.pipeline(transaction=False)
    for row in rows:
        pipe.xadd(
            cfg.results,
            {
                "id": row["id"],
                "product": row["product"],
                "score": f"{row['score']:.6g}",
                "verdict": "anomaly" if row["is_anomaly"] else "ok",
                "stream_id": row["stream_id"] or "",
                "n_regions": str(row.get("n_regions") or 0),
                "largest_box": _largest_box(row.get("regions")),
            },
            maxlen=cfg.results_maxlen,
            approximate=True,
        )
    pipe.execute()


def heartbeat(client: redis.Redis, cfg: StreamConfig, worker: str, stats: dict[str, Any]) -> None:
    key = cfg.heartbeat_prefix + worker
    payload = {"host": socket.gethostname(), "last_seen": f"{time.time():.3f}", **{k: str(v) for k, v in stats.items()}}
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=payload)
    pipe.expire(key, cfg.heartbeat_ttl_s)
    pipe.execute()


def consumer_pending(client: redis.Redis, cfg: StreamConfig, consumer: str) -> int:
    """Entries delivered to ``consumer`` and not yet acknowledged (0 when it is unknown)."""
    try:
        for c in client.xinfo_consumers(cfg.stream, cfg.group):
            if _text(c["name"]) == consumer:
                return int(c["pending"])
    except redis.ResponseError:  # no stream or group yet
        return 0
    return 0


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
            if _text(g["name"]) == cfg.group:
                group_info = {"pending": int(g["pending"]), "lag": g.get("lag"), "consumers": int(g["consumers"])}
        consumers = client.xinfo_consumers(cfg.stream, cfg.group) if group_info else []
        group_info["per_consumer"] = {
            _text(c["name"]): {"pending": int(c["pending"]), "idle_ms": int(c["idle"])} for c in consumers
        }
    except redis.ResponseError:
        group_info = {}
    out["group"] = {"name": cfg.group, **group_info}
    workers = {}
    for key in client.scan_iter(match=cfg.heartbeat_prefix + "*", count=100):
        name = _text(key)[len(cfg.heartbeat_prefix) :]
        workers[name] = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
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
        if _text(g["name"]) == cfg.group:
            lag = g.get("lag")
            return (int(lag) if lag is not None else 0), int(g["pending"])
    return 0, 0
