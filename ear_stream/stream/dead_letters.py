"""Dead-lettering for the worker, also while Redis is full (docs/design.md, "Redis full").

An entry that cannot be scored goes to the dead-letter stream with its fields and reason, and is
acknowledged and deleted in the same transaction (:func:`~.consumer.dead_letter`). A full Redis refuses
that transaction; keeping the entries pending would hold it full for ever (nothing is freed, the worker
never drains), so the letters are written to local disk first (:class:`~.spill.DeadLetterSpill`, fsync'd)
and only then are the entries acknowledged and deleted, which frees what big junk holds. Without a disk
either, the entries stay pending and held by this worker, their letters *parked* in memory and retried:
never dead-lettered as ``max_deliveries`` for the server's fault. Once a second the spill is posted back
and the parked letters are tried again; when both are empty, the "Redis is full" episode is over.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from . import queue as q
from .metrics import WorkerMetrics
from .redis_calls import RedisCalls

log = logging.getLogger("ear_stream.stream.worker.dead_letters")  # a child of the worker's logger, as before the split
#: how often the spill is posted back and the parked letters are tried again (seconds)
RETRY_EVERY_S = 1.0


class DeadLetters:
    """Sends a worker's rejections to the dead-letter stream; spills or parks them while Redis is full.

    ``held`` is the worker's set of stream ids fetched and not yet acknowledged: an entry leaves it once its
    letter is posted or spilled. ``stats`` and ``metrics`` are the worker's (dead letters, spilled ones).
    """

    def __init__(
        self,
        calls: RedisCalls,
        scfg: q.StreamConfig,
        worker: str,
        spill: q.DeadLetterSpill,
        held: set[str],
        stats: dict[str, Any],
        metrics: WorkerMetrics,
    ) -> None:
        self.calls, self.client, self.scfg, self.worker = calls, calls.client, scfg, worker
        self.spill = spill
        self._held, self._stats, self._metrics = held, stats, metrics
        self._parked: list[q.Rejection] = []  # dead letters a full Redis refused and no disk took: retried
        self._lock = threading.Lock()  # letters are sent from the decode side and from the loop
        self._last_try = 0.0

    @property
    def parked(self) -> bool:
        """Letters wait in memory: their entries are still pending, so the worker may not leave yet."""
        return bool(self._parked)

    def send(self, rejections: list[q.Rejection]) -> None:
        """DLQ (with the original fields and the reason) and XACK in one step; spilled or parked when Redis is full."""
        if not rejections:
            return
        try:
            self.calls(
                lambda: q.dead_letter(self.client, self.scfg, rejections, self.worker), "dead letter", raise_oom=True
            )
        except redis.OutOfMemoryError as exc:
            self.calls.note_full("dead letter", exc)
            if not self._spill(rejections):
                return
        self._held.difference_update(r.entry.stream_id for r in rejections)
        self._stats["dead_letters"] += len(rejections)
        for r in rejections:
            self._metrics.dead_letters(str(r.reason))

    def _spill(self, rejections: list[q.Rejection]) -> bool:
        """Letters to local disk, then ack and delete their entries; False when they are parked instead."""
        letters = [q.letter_fields(self.scfg, r, self.worker) for r in rejections]
        try:
            self.spill.write(self.scfg.dlq, self.scfg.dlq_maxlen, letters)
        except OSError as err:
            log.error("cannot spill %d dead letters (%s): their entries stay pending", len(letters), err)
            with self._lock:
                self._parked.extend(rejections)
            return False
        ids = [r.entry.stream_id for r in rejections]
        self.calls(lambda: q.ack(self.client, self.scfg, ids), "ack of spilled dead letters")
        self._stats["dead_letters_spilled"] = self._stats.get("dead_letters_spilled", 0) + len(ids)
        log.info("redis is full: %d dead letters kept in %s until it has room", len(ids), self.spill.directory)
        return True

    def retry(self) -> None:
        """Once a second: post the dead letters spilled to disk while Redis was full, retry the parked ones."""
        now = time.monotonic()
        if now - self._last_try < RETRY_EVERY_S:
            return
        self._last_try = now
        if not self._parked and not self.spill.files():
            return
        try:
            self.spill.repost(self.client)  # stops at the first file a full Redis refuses
        except redis.RedisError as exc:  # unreachable for now: the files wait for the next try
            log.debug("spilled dead letters not posted yet: %s", exc)
        if self._parked:
            with self._lock:
                parked, self._parked = self._parked, []
            self.send(parked)
        if not self._parked and not self.spill.files():
            self.calls.cleared()
