"""The Redis Streams protocol (docs/design.md, "Redis protocol"): names, fields, limits, dead-letter reasons.

Pure data, no Redis client: producers, workers, ``status`` and the CLI's option
defaults all read it from here, so each name and limit is written once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from ..model.config import NON_FINITE_SCORE as CONFIG_NON_FINITE_SCORE

PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ID_BYTES = 256
MAX_META_BYTES = 16 * 1024
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024


class DeadLetter(str, Enum):
    """Why an entry went to the dead-letter stream: its ``reason`` field, machine-readable (the ``error``
    field says the rest). docs/design.md lists when each is given."""

    DECODE_ERROR = "decode_error"
    UNKNOWN_PRODUCT = "unknown_product"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    INVALID_FIELD = "invalid_field"
    MAX_DELIVERIES = "max_deliveries"
    MODEL_ERROR = "model_error"
    NON_FINITE_SCORE = "non_finite_score"

    def __str__(self) -> str:
        return self.value


# the reasons as plain names, as the rest of the code has always used them
DECODE_ERROR = DeadLetter.DECODE_ERROR.value
UNKNOWN_PRODUCT = DeadLetter.UNKNOWN_PRODUCT.value
TOO_LARGE = DeadLetter.TOO_LARGE.value
TOO_SMALL = DeadLetter.TOO_SMALL.value
INVALID_FIELD = DeadLetter.INVALID_FIELD.value
MAX_DELIVERIES = DeadLetter.MAX_DELIVERIES.value
MODEL_ERROR = DeadLetter.MODEL_ERROR.value
NON_FINITE_SCORE = DeadLetter.NON_FINITE_SCORE.value
assert NON_FINITE_SCORE == CONFIG_NON_FINITE_SCORE  # the model wing names the same reason for ``score``


RETAIN_CHOICES = ("none", "acked")
STREAM_KEYS = ("input", "verdict", "dead-letter")


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
    #: what happens to an input entry once its result is durable: ``none`` = deleted (XACKDEL, or XACK+XDEL
    #: in one MULTI/EXEC); ``acked`` = deleted only once every consumer group has acknowledged it (deployments
    #: that attach a second group, e.g. an archiver)
    retain: str = "none"
    #: approximate caps (XADD MAXLEN ~) of the verdict stream and the dead-letter stream
    results_maxlen: int = 100_000
    dlq_maxlen: int = 100_000

    def __post_init__(self) -> None:
        if self.retain not in RETAIN_CHOICES:
            raise ValueError(f"retain must be one of {RETAIN_CHOICES}, got {self.retain!r}")

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
