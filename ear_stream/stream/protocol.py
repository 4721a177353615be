"""The Redis Streams protocol (docs/design.md, "Redis protocol"): names, fields, limits, dead-letter reasons.

Pure data, no Redis client: producers, workers, ``status`` and the CLI's option
defaults all read it from here, so each name and limit is written once.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import ConfigError, EarStreamError, Reason

#: product names (used in paths, keys and partitions): matched whole with ``fullmatch`` (``$`` would accept "x\n")
PRODUCT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: times a dead letter may be replayed before ``dlq replay`` refuses it (``--force`` overrides)
MAX_REPLAYS = 3
MAX_ID_BYTES = 256
MAX_META_BYTES = 16 * 1024
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024
#: the most stream shards one pool is spread over (a shard per Redis Cluster primary, a few per GPU)
MAX_SHARDS = 1024


#: why an entry went to the dead-letter stream (its ``reason`` field): one enum for the whole package
DeadLetter = Reason

# the reasons as plain names, as the rest of the code has always used them
DECODE_ERROR = Reason.DECODE_ERROR.value
UNSUPPORTED_FORMAT = Reason.UNSUPPORTED_FORMAT.value
UNKNOWN_PRODUCT = Reason.UNKNOWN_PRODUCT.value
TOO_LARGE = Reason.TOO_LARGE.value
TOO_SMALL = Reason.TOO_SMALL.value
INVALID_FIELD = Reason.INVALID_FIELD.value
MAX_DELIVERIES = Reason.MAX_DELIVERIES.value
MODEL_ERROR = Reason.MODEL_ERROR.value
NON_FINITE_SCORE = Reason.NON_FINITE_SCORE.value
PAYLOAD_MISSING = Reason.PAYLOAD_MISSING.value
PAYLOAD_MISMATCH = Reason.PAYLOAD_MISMATCH.value
PAYLOAD_INVALID = Reason.PAYLOAD_INVALID.value

#: the fields of a claim-check entry instead of ``image`` (docs/design.md, "Claim-check entries"): where the
#: object is, its sha256 and its size; ``width`` and ``height`` (pixels) are optional
REF_FIELDS = ("uri", "sha256", "bytes")
REF_SIZE_FIELDS = ("width", "height")
MAX_URI_BYTES = 2048
#: ``push --store``: images smaller than this travel inline all the same (a reference and a store round trip
#: cost more than the bytes)
DEFAULT_INLINE_BELOW = 64 * 1024
#: a declared width or height above this is no image a line sends (a typo, or hostile)
MAX_REF_SIDE = 1_000_000
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


#: how far in the future a stream id's time may lie and still count as the enqueue time (clock skew)
MAX_CLOCK_SKEW_S = 86_400.0
RETAIN_CHOICES = ("none", "acked")
STREAM_KEYS = ("input", "verdict", "dead-letter")
#: a worker whose heartbeat (every 2 s, between batches) is older than this is no longer counted as live by
#: ``status``: killed, or stuck; its key expires after ``heartbeat_ttl_s``
STALE_HEARTBEAT_S = 10.0
#: the ``state`` field of a heartbeat: beating, or stopped cleanly (the clean-exit marker)
RUNNING, STOPPED = "running", "stopped"


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
    #: in one Lua script, which runs when Redis is full, where MULTI/EXEC is refused); ``acked`` = deleted only
    #: once every consumer group has acknowledged it (deployments that attach a second group, e.g. an archiver)
    retain: str = "none"
    #: approximate caps (XADD MAXLEN ~) of the verdict stream and the dead-letter stream
    results_maxlen: int = 100_000
    dlq_maxlen: int = 100_000
    #: stream keys the input is spread over (docs/design.md, "Shards"): 1 is one ``stream`` and one ``dlq`` as
    #: always; N > 1 is ``<stream>:{k}`` and ``<dlq>:{k}`` for k in 0..N-1, each pair under one hash tag, so
    #: Redis Cluster spreads the shards over its primaries and a shard's dead letter + ack stays one slot
    shards: int = 1
    #: set on a shard's own config (:meth:`lane`): which shard it is
    shard: int | None = None

    def __post_init__(self) -> None:
        if self.retain not in RETAIN_CHOICES:
            raise ConfigError(f"retain must be one of {RETAIN_CHOICES}, got {self.retain!r}")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"shards must be 1..{MAX_SHARDS}, got {self.shards}")

    def lane(self, k: int) -> StreamConfig:
        """Shard ``k``'s own config: its stream and dead-letter keys under the tag ``{k}``, one shard."""
        if not 0 <= k < self.shards:
            raise ConfigError(f"shard {k} is not one of 0..{self.shards - 1}")
        return dataclasses.replace(self, stream=f"{self.stream}:{{{k}}}", dlq=f"{self.dlq}:{{{k}}}", shards=1, shard=k)

    def lanes(self, own: list[int] | None = None) -> list[StreamConfig]:
        """The configs a reader walks: this one when unsharded, else every shard's (or those in ``own``)."""
        if self.shards == 1:
            return [self]
        return [self.lane(k) for k in (range(self.shards) if own is None else own)]

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
    def enqueued_ms(self) -> int | None:
        """Redis stream ids start with the server time of the XADD in ms (None if the id has no number)."""
        try:
            return int(self.stream_id.split("-", 1)[0])
        except ValueError:
            return None

    def enqueued_at(self, now: datetime) -> datetime | None:
        """When the entry was added, from its id; None when the id is no plausible time.

        A producer may choose ids itself (``XADD key <ms>-<seq>``), e.g. µs taken for ms: an id
        later than ``now`` + :data:`MAX_CLOCK_SKEW_S` (or past year 9999) is accepted and scored,
        its enqueue time and latency left empty, never a crash (docs/design.md, "Stream ids").
        """
        ms = self.enqueued_ms
        if ms is None or ms < 0 or ms / 1000.0 > now.timestamp() + MAX_CLOCK_SKEW_S:
            return None
        try:
            return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None


@dataclass
class Rejection:
    entry: Entry
    reason: str
    message: str


@dataclass(frozen=True)
class PayloadRef:
    """A claim check: the image is the object ``uri`` names (its last two parts, ``<aa>/<sha256><.ext>``, are
    the blob key it resolves by in the worker's payload store), of ``bytes`` bytes and this ``sha256``."""

    uri: str
    sha256: str
    bytes: int
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) when the producer gave both, for the pixel budget before the object is fetched."""
        return (self.height, self.width) if self.width and self.height else None


@dataclass
class ValidEntry:
    """An entry whose fields passed; ``image`` is its payload (empty until fetched when ``ref`` is set)."""

    entry: Entry
    id: str
    product: str
    image: bytes
    meta: str | None = None
    ref: PayloadRef | None = None


def check_product(product: str) -> str:
    """A product name as used in model folders, stream entries and result partitions, or a clear error."""
    if not PRODUCT_RE.fullmatch(product or ""):
        raise ValidationError(
            INVALID_FIELD, f"product {product!r} must be 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return product


class ValidationError(EarStreamError, ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def as_text(value: bytes | str | None) -> str | None:
    """A field or reply as text (redis-py returns bytes unless the client decodes)."""
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
        except RecursionError:  # '[' * 7000 fits in the byte limit and overflows the parser's stack
            raise ValidationError(INVALID_FIELD, "meta is JSON nested too deeply to parse") from None


def parse_entry(entry: Entry, max_image_bytes: int) -> ValidEntry:
    """Check the fields of a delivered entry; raises :class:`ValidationError` with a DLQ reason.

    The payload is ``image`` (inline bytes) or a claim check (:data:`REF_FIELDS`), never both.
    """
    f = entry.fields
    missing = [k for k in ("id", "product") if k not in f]
    if "image" not in f and "uri" not in f:
        missing.append("image (or a reference: uri, sha256, bytes)")
    if missing:
        raise ValidationError(INVALID_FIELD, f"missing field(s): {', '.join(missing)}")
    if "image" in f and "uri" in f:
        raise ValidationError(INVALID_FIELD, "an entry carries image or a reference (uri, sha256, bytes), not both")
    try:
        ident, product = as_text(f["id"]), as_text(f["product"])
        meta = as_text(f.get("meta"))
    except UnicodeDecodeError as exc:
        raise ValidationError(INVALID_FIELD, f"id, product and meta must be UTF-8: {exc}") from exc
    if "uri" in f:
        ref = parse_reference(f, max_image_bytes)
        validate_fields(product, ident, b"claim check", meta, max_image_bytes)  # the payload is checked on fetch
        return ValidEntry(entry, ident, product, b"", meta, ref)
    validate_fields(product, ident, f["image"], meta, max_image_bytes)
    return ValidEntry(entry, ident, product, f["image"], meta)


def parse_reference(f: dict[str, bytes], max_image_bytes: int) -> PayloadRef:
    """The claim check of an entry's fields, or a :class:`ValidationError` with the reason a worker gives."""
    missing = [k for k in REF_FIELDS if k not in f]
    if missing:
        raise ValidationError(INVALID_FIELD, f"a reference needs uri, sha256 and bytes; missing {', '.join(missing)}")
    try:
        uri, sha = as_text(f["uri"]) or "", (as_text(f["sha256"]) or "").lower()
        numbers = {k: as_text(f[k]) for k in ("bytes", *REF_SIZE_FIELDS) if k in f}
    except UnicodeDecodeError as exc:
        raise ValidationError(INVALID_FIELD, f"uri, sha256, bytes, width and height must be UTF-8: {exc}") from exc
    if not uri or len(uri.encode()) > MAX_URI_BYTES:
        raise ValidationError(INVALID_FIELD, f"uri must be 1..{MAX_URI_BYTES} bytes")
    if not _SHA256_RE.fullmatch(sha):
        raise ValidationError(INVALID_FIELD, "sha256 must be 64 hexadecimal digits")
    if uri.split("?", 1)[0].rstrip().rsplit("/", 1)[-1].split(".", 1)[0].lower() != sha:
        raise ValidationError(PAYLOAD_INVALID, "the uri does not end in the object's key <aa>/<sha256>[.ext]")
    values: dict[str, int] = {}
    for key, text in numbers.items():
        try:
            values[key] = int(text or "")
        except ValueError:
            raise ValidationError(INVALID_FIELD, f"{key} must be an integer, got {text!r}"[:300]) from None
    if values["bytes"] < 1:
        raise ValidationError(INVALID_FIELD, f"bytes must be at least 1, got {values['bytes']}")
    if values["bytes"] > max_image_bytes:
        raise ValidationError(TOO_LARGE, f"the object is {values['bytes']} bytes, limit is {max_image_bytes}")
    for key in REF_SIZE_FIELDS:
        if key in values and not 1 <= values[key] <= MAX_REF_SIDE:
            raise ValidationError(INVALID_FIELD, f"{key} must be 1..{MAX_REF_SIDE}, got {values[key]}")
    return PayloadRef(uri, sha, values["bytes"], values.get("width"), values.get("height"))


def reference_fields(uri: str, sha256: str, size: int, pixels: tuple[int, int] | None = None) -> dict[str, str]:
    """The claim-check fields a producer XADDs instead of ``image`` (``pixels``: the image's height, width)."""
    fields = {"uri": uri, "sha256": sha256, "bytes": str(size)}
    if pixels is not None:
        fields.update(height=str(pixels[0]), width=str(pixels[1]))
    return fields
