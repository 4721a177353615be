"""Verdict rows in hand until they are durable, then acknowledged (docs/design.md, "Parquet", "Redis protocol").

Durable Parquet first, then XACK: an entry is acknowledged only once its row is on disk, so a crash
anywhere leaves it pending, to be scored again (at-least-once). Rows are flushed when there are
``flush_rows`` of them or the oldest has waited ``flush_seconds``: the flush interval bounds verdict
latency. A write that fails (a full disk, a store that is down) keeps the rows and their entries: the
write is retried with backoff, and the entries the worker holds are kept claimed (XCLAIM JUSTID, which
does not count a delivery) so that neither a restart loop nor another worker turns the worker's own
fault into ``max_deliveries``. Rows are also published to the optional verdict stream, a notification
copy that a full Redis may refuse. With ``--keep-images`` the rows' kept images are settled first
(:meth:`~ear_stream.io.keeping.ImageKeeper.settle`): a row never names an image not yet written, and a
store that fails leaves ``image_uri`` null instead of holding the rows back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from ..io.keeping import ImageKeeper
from ..io.results import ResultWriter
from . import queue as q
from .metrics import WorkerMetrics
from .redis_calls import RedisCalls
from .settings import WorkerConfig

log = logging.getLogger("ear_stream.stream.worker.flush")  # a child of the worker's logger, as before the split
#: a results write that failed (full disk, store down) is retried after 0.5 s, doubling to at most 30 s
WRITE_BACKOFF_S, WRITE_BACKOFF_CAP_S = 0.5, 30.0


class VerdictBuffer:
    """A worker's scored rows and their stream ids, from scoring to Parquet and XACK.

    ``held`` is the worker's set of stream ids fetched and not yet acknowledged; ``fault`` its test hook,
    called at ``before_ack`` (between the durable write and the acknowledgement).
    """

    def __init__(
        self,
        cfg: WorkerConfig,
        calls: RedisCalls,
        held: set[str],
        stats: dict[str, Any],
        metrics: WorkerMetrics,
        fault: Callable[[str], None],
        keeper: ImageKeeper | None = None,
        acked: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.cfg, self.scfg = cfg, cfg.stream
        #: told the rows whose entries were just acknowledged (the claim checks' objects are released then)
        self._acked = acked
        self.calls, self.client = calls, calls.client
        self.writer = ResultWriter(cfg.out_dir, cfg.name)
        self._held, self._stats, self._metrics, self._fault = held, stats, metrics, fault
        self.keeper = keeper
        self.rows: list[dict[str, Any]] = []
        self._unacked: list[str] = []
        self._first_buffered: float | None = None
        #: consecutive failed results writes (0: writing works); while > 0 the worker reads nothing new
        self.write_failures = 0
        self.write_retry_at = 0.0
        self._last_touch = 0.0

    def add(self, rows: list[dict[str, Any]], stream_ids: list[str]) -> None:
        """A scored batch's rows (possibly none: the flush deadline then starts all the same)."""
        self.rows += rows
        self._unacked += stream_ids
        if self._first_buffered is None:
            self._first_buffered = time.monotonic()

    def waited_s(self) -> float:
        """How long the oldest row in hand has waited."""
        return time.monotonic() - (self._first_buffered or time.monotonic())

    def due(self, ahead: float = 0.0) -> bool:
        """Rows to flush now: enough of them, or the oldest would wait past flush_seconds within ``ahead``
        (after a failed write: once its backoff has passed)."""
        if not self.rows:
            return False
        if self.write_failures:
            return time.monotonic() >= self.write_retry_at
        return len(self.rows) >= self.cfg.flush_rows or self.waited_s() + ahead >= self.cfg.flush_seconds

    def flush(self) -> None:
        """Durable Parquet first, then XACK (then the verdict stream); a failed write backs off."""
        if not self.rows:
            return
        rows, ids = self.rows, self._unacked
        if self.keeper is not None:
            self.keeper.settle()  # image_uri is set (or stays null) before the rows are durable
        try:
            self.writer.write(rows)
        except OSError as exc:  # ENOSPC, EIO, a store's IOError (pyarrow's are OSError too)
            self._write_failed(exc)
            return
        if self.write_failures:
            log.info("results are written again after %d failed tries", self.write_failures)
            self.write_failures = 0
            self._metrics.results_write_failing.set(0)
        self._fault("before_ack")
        self.rows, self._unacked, self._first_buffered = [], [], None
        try:
            self.calls(lambda: q.ack(self.client, self.scfg, ids), "ack")
            self._held.difference_update(ids)
            if self._acked is not None:
                self._acked(rows)
            try:
                self.calls(lambda: q.publish_results(self.client, self.scfg, rows), "result stream", raise_oom=True)
            except redis.OutOfMemoryError as exc:  # a notification copy; the rows are durable in Parquet
                self.calls.note_full("result stream", exc)
                self._stats["results_skipped_oom"] += len(rows)
        except redis.RedisError as exc:  # only when stopping with Redis gone: entries will be re-scored
            log.error("could not acknowledge %d entries (%s); they will be scored again", len(ids), exc)
        self._stats["scored"] += len(rows)
        self._stats["flushes"] += 1
        self._metrics.images.inc(len(rows))

    def _write_failed(self, exc: OSError) -> None:
        """Back off after a failed results write: say so once per episode, keep the held entries claimed."""
        if not self.write_failures:
            log.error(
                "cannot write results (%s): %d rows kept, their entries stay pending; retrying with backoff",
                exc, len(self.rows),
            )  # fmt: skip
        self.write_failures += 1
        self._stats["write_failures"] = self._stats.get("write_failures", 0) + 1
        self._metrics.results_write_failing.set(1)
        delay = min(WRITE_BACKOFF_CAP_S, WRITE_BACKOFF_S * 2 ** min(self.write_failures - 1, 16))
        self.write_retry_at = time.monotonic() + delay
        self.keep_held_claimed()

    def keep_held_claimed(self) -> None:
        """Reset the idle time of the entries this worker holds, at most every half ``claim_idle_ms``."""
        now = time.monotonic()
        if not self._held or now - self._last_touch < self.scfg.claim_idle_ms / 2000:
            return
        self._last_touch = now
        held = sorted(self._held)
        try:
            self.calls(lambda: q.keep_claimed(self.client, self.scfg, self.cfg.name, held), "keep entries claimed")
        except redis.RedisError as exc:  # only when stopping with Redis gone; the entries stay pending anyway
            log.warning("could not keep %d entries claimed (%s)", len(held), exc)
