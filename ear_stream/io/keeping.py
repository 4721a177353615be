"""Keeping the original images a person must see and a model must learn from (docs/design.md, "Keeping images").

The stream worker, ``cluster`` and ``score`` keep, in a :class:`~.store.BlobStore`, the original bytes (the
entry's payload, the file as read; never the resized tensor) of every flagged row (``is_anomaly``: a verdict,
a camera fault or an out-of-distribution frame) and of a stable share of the passed ones: the review sample,
drawn by :func:`in_passed_sample`, the draw the review station queues passed items by (same hash, same
default seed), so a kept passed image is one the station asks a person about.

The row records where (``image_uri``). A put runs on one background thread while the line scores on; the
rows' writer calls :meth:`ImageKeeper.settle` before a row becomes durable, so a row never names an image
that is not written yet. Keeping never stops the line: a store that fails (read-only, full, unreachable, a
file where its folder should be) leaves the rows' ``image_uri`` null, is logged once per episode and
counted, and while it fails the keeper does not queue puts behind a try still running, nor wait for one
(a hung object store costs a row its image, never the line its pace). Retention (:meth:`ImageKeeper.
maybe_prune`) runs on its own thread at most every :data:`PRUNE_EVERY_S`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # the store (pyarrow, Pillow) loads when a keeper opens it: the CLI's options stay light
    from .store import BlobStore, Pruned, StoredRef, Usage

log = logging.getLogger("ear_stream.io.keeping")

#: the review station's default seed of its passed-item sample (``ReviewConfig.seed``): with the same seed,
#: the passed items kept (share ``--keep-passed``) are within those the station queues (``--passed-sample``)
SAMPLE_SEED = 0
#: retention (and the gauge of bytes kept) runs at most this often: a listing of the store each time
PRUNE_EVERY_S = 60.0
#: how long the rows' writer waits for the puts of the rows it is about to write, while the store works;
#: a put slower than this leaves its row's ``image_uri`` null and starts a failure episode
KEEP_WAIT_S = 10.0
#: while the store fails, the one put out (a probe) is waited for this long: a store that works again is
#: seen at once, a hung one costs a flush at most this
PROBE_WAIT_S = 1.0
#: byte-size suffixes of ``--keep-bytes``: K, M, G, T (and KB…TB) are powers of 1000, KiB…TiB of 1024
_SIZE = re.compile(r"\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>(?:[kmgt](?:i?b)?)|b)?\s*", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_bytes(text: str | int) -> int:
    """``10G`` → 10·10⁹, ``512MiB`` → 512·2²⁰, ``2048`` → 2048 (a byte budget, at least 1)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(str(text))
        if match is None:
            raise ConfigError(f"a size is a number of bytes with an optional K, M, G, T (or KiB…TiB), got {text!r}")
        unit = (match["unit"] or "b").lower()
        base = 1024 if unit.endswith("ib") else 1000
        value = int(float(match["n"]) * base ** _POWERS.get(unit[0], 0))
    if value < 1:
        raise ConfigError(f"a byte budget is at least 1 byte, got {text!r}")
    return value


def in_passed_sample(product: str, ident: str, share: float, seed: int = SAMPLE_SEED) -> bool:
    """Whether a passed item is in the review sample: a hash of (seed, product, id), stable across runs,
    workers and reloads, and nested (an item in the sample at one share is in it at every larger share)."""
    digest = hashlib.sha1(f"{seed}\0{product}\0{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass(frozen=True)
class KeepPolicy:
    """What is kept, where, and for how long: ``--keep-images``, ``--keep-passed``, ``--keep-bytes``, ``--keep-days``."""

    location: str
    #: share of passed items kept (the review sample); 0 keeps flagged items only
    passed_share: float
    #: the store is pruned, oldest first, down to this many bytes (None: no byte budget)
    max_bytes: int | None = None
    #: blobs older than this many days are pruned (None: no age limit)
    max_days: float | None = None
    seed: int = SAMPLE_SEED

    def __post_init__(self) -> None:
        if not str(self.location).strip():
            raise ConfigError("--keep-images needs a folder or a filesystem URI")
        if not 0.0 <= self.passed_share <= 1.0:
            raise ConfigError(f"--keep-passed is a share between 0 and 1, got {self.passed_share}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"--keep-bytes is at least 1 byte, got {self.max_bytes}")
        if self.max_days is not None and not self.max_days > 0:
            raise ConfigError(f"--keep-days is more than 0, got {self.max_days}")

    @property
    def max_age_s(self) -> float | None:
        return None if self.max_days is None else self.max_days * 86400.0

    def wants(self, product: str, ident: str, flagged: bool) -> bool:
        """Every flagged item; a passed one when it is in the review sample."""
        return bool(flagged) or in_passed_sample(product, ident, self.passed_share, self.seed)

    def shown(self) -> str:
        """The location as messages may show it (no credentials, no query parameters)."""
        from .store import redacted

        return redacted(str(self.location))


def local_location(location: str | Path) -> str:
    """A local folder as an absolute path (a Ray actor or a restarted worker may run elsewhere); a URI as given."""
    text = str(location).strip()
    return text if "://" in text else str(Path(text).expanduser().absolute())


class ImageKeeper:
    """Puts images on a background thread, fills the rows' ``image_uri`` when they are settled, prunes.

    ``on_settled(kept, failed)`` and ``on_usage(usage)`` let the owner count and gauge (the worker's metrics
    and heartbeat); ``on_usage`` is called from the retention thread. One keeper per process writer; its
    methods but the callbacks run on the caller's thread.
    """

    def __init__(
        self,
        policy: KeepPolicy,
        on_settled: Callable[[int, int], None] | None = None,
        on_usage: Callable[[Usage], None] | None = None,
        wait_s: float = KEEP_WAIT_S,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.policy = policy
        self.on_settled, self.on_usage = on_settled, on_usage
        self.wait_s, self.prune_every_s = wait_s, prune_every_s
        self._store: BlobStore | None = None
        self._store_lock = threading.Lock()
        self._puts = ThreadPoolExecutor(1, thread_name_prefix="ear-keep")
        self._pruner = ThreadPoolExecutor(1, thread_name_prefix="ear-keep-prune")
        #: rows waiting for their put, in the order they were scored
        self._pending: list[tuple[dict[str, Any], Future[StoredRef] | None]] = []
        #: puts submitted and not finished (a hung one must not have others queue behind it)
        self._running: set[Future[StoredRef]] = set()
        self._prune: Future[None] | None = None
        self._next_prune = 0.0
        self._prune_failing = False
        #: in a failure episode: the last settled put failed
        self.failing = False
        self._episode_failures = 0
        self.kept = self.failed = 0
        #: what the store held at the last prune (None before the first)
        self.usage: Usage | None = None

    # ------------------------------------------------------------------ keeping
    def wants(self, product: str, ident: str, flagged: bool) -> bool:
        return self.policy.wants(product, ident, flagged)

    def keep(self, row: dict[str, Any], data: bytes) -> None:
        """Put ``data`` for ``row`` (its ``image_uri`` is set by :meth:`settle`, before the row is written)."""
        row["image_uri"] = None
        if self.failing and self._running:  # the store fails and a try is still out: do not queue behind it
            self._pending.append((row, None))
            return
        future = self._puts.submit(self._put, data)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        self._pending.append((row, future))

    def _put(self, data: bytes) -> StoredRef:
        return self.store().put(data)

    def store(self) -> BlobStore:
        """The store, opened on first use (on a keeper thread: an unreachable object store never delays start-up),
        and again after a failure to open it."""
        with self._store_lock:
            if self._store is None:
                from .store import BlobStore

                self._store = BlobStore(self.policy.location)
            return self._store

    def settle(self) -> None:
        """Wait for the pending rows' puts (up to ``wait_s`` in all; while the store fails, up to
        :data:`PROBE_WAIT_S` for the one try out) and set each row's ``image_uri``: the blob's URI, or null when
        its put failed, timed out or was skipped."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        deadline = time.monotonic() + (min(self.wait_s, PROBE_WAIT_S) if self.failing else self.wait_s)
        kept = failed = 0
        error: BaseException | None = None  # the outcome of the last put tried (a skipped one tells nothing)
        for row, future in pending:
            if future is None:  # not tried: the store was failing and a put was still out
                failed += 1
                continue
            try:
                ref = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                error = TimeoutError(f"a put took longer than {self.wait_s:g} s")
                failed += 1
                continue
            except Exception as exc:  # noqa: BLE001 - whatever the store raises, the row goes on without its image
                error = exc
                failed += 1
                continue
            row["image_uri"] = ref.uri
            kept += 1
            error = None
        self.kept += kept
        self.failed += failed
        self._episode(kept, failed, error)
        if self.on_settled is not None:
            self.on_settled(kept, failed)

    def _episode(self, kept: int, failed: int, error: BaseException | None) -> None:
        """A warning when keeping starts failing, a line when it works again (the last settled put decides)."""
        if error is not None:
            if not self.failing:
                log.warning(
                    "cannot keep images in %s (%s: %s): their rows have no image_uri; scoring goes on, and keeping "
                    "is tried again", self.policy.shown(), type(error).__name__, error,
                )  # fmt: skip
            self.failing = True
            self._episode_failures += failed
        elif kept and self.failing:
            missed = self._episode_failures + failed
            log.info("images are kept again in %s after %d were not", self.policy.shown(), missed)
            self.failing, self._episode_failures = False, 0
        elif self.failing:
            self._episode_failures += failed

    # ------------------------------------------------------------------ retention
    def maybe_prune(self, force: bool = False) -> None:
        """Start a prune on the retention thread when ``prune_every_s`` has passed (or ``force``), unless one runs."""
        now = time.monotonic()
        if (not force and now < self._next_prune) or (self._prune is not None and not self._prune.done()):
            return
        self._next_prune = now + self.prune_every_s
        self._prune = self._pruner.submit(self._run_prune)

    def prune_now(self, timeout_s: float | None = None) -> Usage | None:
        """A prune, waited for up to ``timeout_s`` (at the end of a run: the store is left within its budget)."""
        self.maybe_prune(force=True)
        if self._prune is not None:
            try:
                self._prune.result(timeout=self.wait_s if timeout_s is None else timeout_s)
            except FutureTimeout:
                log.warning("retention of %s is still running; left to finish in the background", self.policy.shown())
        return self.usage

    def _run_prune(self) -> None:
        """Oldest first down to ``--keep-bytes`` and ``--keep-days`` (neither: a listing for the gauge, and the
        temporaries a killed writer left); a failure is logged once per episode, never raised."""
        try:
            pruned: Pruned = self.store().prune(self.policy.max_bytes, self.policy.max_age_s)
        except Exception as exc:  # noqa: BLE001 - retention never stops the line
            if not self._prune_failing:
                log.warning("cannot prune the kept images in %s: %s: %s", self.policy.shown(), type(exc).__name__, exc)
            self._prune_failing = True
            return
        if self._prune_failing:
            log.info("the kept images in %s are pruned again", self.policy.shown())
        self._prune_failing = False
        if pruned.removed:
            log.info(
                "retention: removed %d kept images (%d bytes) from %s; %d bytes in %d kept",
                pruned.removed, pruned.freed_bytes, self.policy.shown(), pruned.kept.bytes, pruned.kept.objects,
            )  # fmt: skip
        self.usage = pruned.kept
        if self.on_usage is not None:
            self.on_usage(pruned.kept)

    def close(self) -> None:
        """Settle what is left, and stop the threads (a put or prune still hung is left behind, not waited for)."""
        self.settle()
        self._puts.shutdown(wait=False, cancel_futures=True)
        self._pruner.shutdown(wait=False, cancel_futures=True)
