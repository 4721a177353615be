"""The producer side of the stream (docs/design.md, "Redis protocol"): validated XADD, backpressure, never trimming."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from ..errors import EarStreamError
from ..io.limits import DEFAULT_MAX_PIXELS
from .connection import is_cluster, slot_client
from .protocol import StreamConfig, ValidationError, as_text, reference_fields, validate_fields
from .redis_calls import RedisCalls

if TYPE_CHECKING:
    from ..io.store import BlobStore

log = logging.getLogger("ear_stream.stream.producer")
#: how long a producer with ``replicas`` waits for them to have an entry (WAIT)
REPLICA_WAIT_MS = 2000
#: tries a producer gives an unreachable Redis after the first, before its caller sees the error (~3 s of backoff)
PRODUCER_RETRIES = 5


def push(
    client: redis.Redis,
    product: str,
    image: bytes,
    ident: str,
    meta: dict[str, Any] | str | None = None,
    cfg: StreamConfig | None = None,
    store: BlobStore | None = None,
    replicas: int = 0,
) -> str:
    """Validate and XADD one image; returns the stream id. Never trims: see :class:`Producer` for backpressure.

    With ``store`` the image is put there first and the entry carries its claim check (``uri``, ``sha256``,
    ``bytes``, and ``width``/``height`` when the header says) instead of the bytes (docs/design.md,
    "Claim-check entries"): an XADD never names an object that is not whole in the store.
    """
    cfg = cfg or StreamConfig()
    meta_text = json.dumps(meta) if isinstance(meta, dict) else meta
    validate_fields(product, ident, image, meta_text, cfg.max_image_bytes)
    fields: dict[str, Any] = {"id": ident, "product": product}
    if store is None:
        fields["image"] = image
    else:
        from ..io.decode import header_size

        ref = store.put(image)
        fields.update(reference_fields(ref.uri, ref.sha256, ref.bytes, header_size(image)))
    if meta_text is not None:
        fields["meta"] = meta_text
    if replicas <= 0:
        return as_text(client.xadd(cfg.stream, fields))
    # WAIT counts the writes of its own connection: XADD and WAIT on one connection of the key's primary
    pipe = slot_client(client, cfg.stream).pipeline(transaction=False)
    pipe.xadd(cfg.stream, fields)
    pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS)
    try:
        sid, acked = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError) as exc:
        if is_cluster(client):  # a failover moved the slot: read the map again, the retry asks the new primary
            client.nodes_manager.initialize()
            raise redis.ConnectionError(f"the primary of {cfg.stream} changed or is gone ({exc})") from exc
        raise
    if int(acked) < replicas:
        raise redis.ConnectionError(
            f"{cfg.stream}: the entry reached {acked} of {replicas} replicas within {REPLICA_WAIT_MS} ms "
            "(it is on the primary; a failover now could lose it)"
        )
    return as_text(sid)


#: the side :func:`check_image` decodes towards (a large JPEG at a reduced DCT scale: every byte read, less memory)
CHECK_DECODE_SIDE = 64


def check_image(image: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse bytes a worker could not score, before they reach Redis: :class:`ValidationError` with the
    dead-letter reason the worker would give (``unsupported_format``, ``too_large``, ``decode_error``).

    :func:`~ear_stream.io.decode.decode_frame` reads the header first (format, pixel budget: a bomb is
    refused before any pixel is decoded), then decodes for real, towards a small side: a truncated or
    corrupt file fails only there.
    """
    from ..io.decode import ImageDecodeError, decode_frame

    try:
        decode_frame(image, max_pixels, target=CHECK_DECODE_SIDE)
    except ImageDecodeError as exc:
        raise ValidationError(exc.reason, str(exc)) from None


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

    Redis calls go through the worker's policy (``calls``, :class:`~.redis_calls.RedisCalls`; by default
    :data:`PRODUCER_RETRIES` tries with backoff for a lost connection, the ACL refusal in one line, and a
    full Redis raised at once: the caller decides). An XADD retried after a lost reply may add the image
    twice: entries are at-least-once, and ``results`` drops the duplicate row.

        producer = Producer(q.connect("redis://…"), StreamConfig(), max_backlog=10_000)
        producer.push("bracket", png_bytes, "line3-000123", {"station": 3})
    """

    client: redis.Redis
    cfg: StreamConfig = field(default_factory=StreamConfig)
    max_backlog: int = 10_000
    wait_timeout_s: float = 30.0
    check_every_s: float = 0.1
    waited_s: float = 0.0  # total time spent waiting for room (a metric for the caller)
    calls: RedisCalls | None = None
    #: claim checks (docs/design.md, "Claim-check entries"): images of ``inline_below`` bytes or more go to
    #: ``store`` and the entry carries their reference; smaller ones (and all without a store) travel inline
    store: BlobStore | None = None
    inline_below: int = 0
    #: replicas each entry must reach before push returns (WAIT): on a Redis Cluster or a primary with
    #: replicas, a failover right after the push then cannot lose it; a shortfall is retried like a lost reply
    replicas: int = 0
    _room: int = 0
    _checked_at: float = -1e9

    def __post_init__(self) -> None:
        self._calls = self.calls or RedisCalls(self.client, retries=PRODUCER_RETRIES)

    def push(self, product: str, image: bytes, ident: str, meta: dict[str, Any] | str | None = None) -> str:
        self.wait_for_room()
        store = self.store if self.store is not None and len(image) >= self.inline_below else None
        sid = self._calls(
            lambda: push(self.client, product, image, ident, meta, self.cfg, store, self.replicas),
            "push to the input stream",
            raise_oom=True,
        )
        self._room -= 1
        return sid

    def backlog(self) -> int:
        return self._calls(lambda: int(self.client.xlen(self.cfg.stream)), "read the backlog (XLEN)", raise_oom=True)

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
