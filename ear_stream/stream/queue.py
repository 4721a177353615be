"""The stream wing's Redis calls in one namespace (``from ear_stream.stream import queue as q``).

Each job has its module — :mod:`.protocol` (names, fields, reasons), :mod:`.connection`,
:mod:`.producer`, :mod:`.consumer` (group, claims, dead letters, ack), :mod:`.status` — and this
module re-exports them, so callers and tests keep one short prefix.

Entries of the input stream carry ``id`` (producer-unique), ``product``,
``image`` (encoded bytes) and optional ``meta`` (JSON). Workers read them with
XREADGROUP, reclaim idle ones with XAUTOCLAIM, dead-letter what cannot be
processed (with a reason) and XACK only after the rows are durably on disk —
see :mod:`ear_stream.stream.worker`. Values are bytes or JSON; nothing is pickled.
"""

from __future__ import annotations

from .connection import RedisSetupError, check_url, connect, describe_url, permission_error, verify_connection
from .consumer import (
    ack,
    claim_idle,
    consumer_pending,
    dead_letter,
    ensure_group,
    heartbeat,
    publish_results,
    read_new,
    read_own_pending,
    server_has_xackdel,
    with_delivery_counts,
)
from .producer import BackpressureError, Producer, push
from .protocol import (
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
    as_text,
    check_product,
    parse_entry,
    validate_fields,
)
from .status import backlog, check_eviction_policy, redis_memory, stream_lengths, stream_status

__all__ = [
    "DECODE_ERROR",
    "DEFAULT_MAX_IMAGE_BYTES",
    "INVALID_FIELD",
    "MAX_DELIVERIES",
    "MAX_ID_BYTES",
    "MAX_META_BYTES",
    "MODEL_ERROR",
    "NON_FINITE_SCORE",
    "PRODUCT_RE",
    "RETAIN_CHOICES",
    "STREAM_KEYS",
    "TOO_LARGE",
    "TOO_SMALL",
    "UNKNOWN_PRODUCT",
    "UNSUPPORTED_FORMAT",
    "BackpressureError",
    "DeadLetter",
    "Entry",
    "Producer",
    "RedisSetupError",
    "Rejection",
    "StreamConfig",
    "ValidEntry",
    "ValidationError",
    "ack",
    "as_text",
    "backlog",
    "check_eviction_policy",
    "check_product",
    "check_url",
    "claim_idle",
    "connect",
    "consumer_pending",
    "dead_letter",
    "describe_url",
    "ensure_group",
    "heartbeat",
    "parse_entry",
    "permission_error",
    "publish_results",
    "push",
    "read_new",
    "read_own_pending",
    "redis_memory",
    "server_has_xackdel",
    "stream_lengths",
    "stream_status",
    "validate_fields",
    "verify_connection",
    "with_delivery_counts",
]
