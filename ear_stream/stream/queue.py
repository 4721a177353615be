"""Redis Streams protocol of SPEC §3: producer, consumer group, claims, dead letters, status.

Entries of the input stream carry ``id`` (producer-unique), ``product``,
``image`` (encoded bytes) and optional ``meta`` (JSON). Workers read them with
XREADGROUP, reclaim idle ones with XAUTOCLAIM, dead-letter what cannot be
processed (with a reason) and XACK only after the rows are durably on disk —
see :mod:`ear_stream.stream.worker`. Values are bytes or JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis

from ..model.config import NON_FINITE_SCORE  # noqa: F401 - a DLQ reason: NaN/inf score

PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ID_BYTES = 256
MAX_META_BYTES = 16 * 1024
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024

# dead-letter reasons (machine-readable; the message says the rest)
DECODE_ERROR = "decode_error"
UNKNOWN_PRODUCT = "unknown_product"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
INVALID_FIELD = "invalid_field"
MAX_DELIVERIES = "max_deliveries"


@dataclass
class StreamConfig:
    """Names and limits shared by producers, workers and ``status``."""

    stream: str = "ear:in"
    group: str = "ear-workers"
    dlq: str = "ear:dlq"
    results: str | None = None  # e.g. "ear:out"
    max_deliveries: int = 5
    claim_idle_ms: int = 60_000
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    heartbeat_ttl_s: int = 30

    @property
    def heartbeat_prefix(self) -> str:
        """Heartbeat keys are per stream and group, so ``status`` lists only this pool's workers."""
        return f"{self.stream}:{self.group}:workers:"


@dataclass
class Entry:
    """One delivered stream entry; ``fields`` keys are str, values bytes."""

    stream_id: str
    fields: dict[str, bytes]
    deliveries: int = 1

    @property
    def enqueued_ms(self) -> int:
        """Redis stream ids start with the server time of the XADD in ms."""
        return int(self.stream_id.split("-", 1)[0])


@dataclass
class Rejection:
    entry: Entry
    reason: str
    message: str


@dataclass
class ValidEntry:
    entry: Entry
    id: str
    product: str
    image: bytes
    meta: str | None = None


class ValidationError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RedisSetupError(RuntimeError):
    """Redis cannot be used as configured (unreachable, wrong or missing password): retrying will not fix it."""


def describe_url(url: str) -> str:
    """host:port/db of a Redis URL, never the password (for messages and logs)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    return f"{u.scheme}://{u.hostname or 'localhost'}:{u.port or 6379}{u.path or '/0'}"


def connect(url: str, verify: bool = False, **kwargs: Any) -> redis.Redis:
    """A client from a ``redis://`` or ``rediss://`` URL (password and TLS options in the URL).

    ``verify`` pings once and turns the two set-up mistakes, an unreachable
    server and refused credentials, into :class:`RedisSetupError` with the fix.
    """
    options = {"socket_timeout": 30, "socket_connect_timeout": 5, "health_check_interval": 15, **kwargs}
    client = redis.Redis.from_url(url, **options)
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
    if not PRODUCT_RE.match(product or ""):
        raise ValidationError(INVALID_FIELD, f"product {product!r} must match {PRODUCT_RE.pattern}")
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
    maxlen: int | None = None,
) -> str:
    """Validate and XADD one image; returns the stream id. ``maxlen`` trims approximately."""
    cfg = cfg or StreamConfig()
    meta_text = json.dumps(meta) if isinstance(meta, dict) else meta
    validate_fields(product, ident, image, meta_text, cfg.max_image_bytes)
    fields: dict[str, Any] = {"id": ident, "product": product, "image": image}
    if meta_text is not None:
        fields["meta"] = meta_text
    sid = client.xadd(cfg.stream, fields, maxlen=maxlen, approximate=True)
    return _text(sid)


# --------------------------------------------------------------------------- consumer side
def ensure_group(client: redis.Redis, cfg: StreamConfig) -> None:
    """Create the consumer group (and the stream) if needed; start from the beginning of the stream."""
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
    """XADD each rejection to the DLQ with its reason, then XACK the originals, in one transaction."""
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
        pipe.xadd(cfg.dlq, fields)
    pipe.xack(cfg.stream, cfg.group, *[r.entry.stream_id for r in rejections])
    pipe.execute()


def ack(client: redis.Redis, cfg: StreamConfig, stream_ids: list[str]) -> int:
    return int(client.xack(cfg.stream, cfg.group, *stream_ids)) if stream_ids else 0


def publish_results(client: redis.Redis, cfg: StreamConfig, rows: list[dict[str, Any]]) -> None:
    """Optional result stream: id, product, score, verdict per row."""
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
            },
        )
    pipe.execute()


def heartbeat(client: redis.Redis, cfg: StreamConfig, worker: str, stats: dict[str, Any]) -> None:
    key = cfg.heartbeat_prefix + worker
    payload = {"host": socket.gethostname(), "last_seen": f"{time.time():.3f}", **{k: str(v) for k, v in stats.items()}}
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=payload)
    pipe.expire(key, cfg.heartbeat_ttl_s)
    pipe.execute()


def stream_status(client: redis.Redis, cfg: StreamConfig) -> dict[str, Any]:
    """Stream length, group lag and pending, pending per consumer, DLQ size, live workers."""
    out: dict[str, Any] = {
        "stream": cfg.stream,
        "length": int(client.xlen(cfg.stream)),
        "dlq": int(client.xlen(cfg.dlq)),
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
