"""The stream worker loop (docs/design.md, "Redis protocol"): one process, used by ``ear-stream worker`` and the Ray actors.

Per iteration: *read* entries (own pending ones after a restart, idle ones of others now and then with
XAUTOCLAIM, then new ones with XREADGROUP); *take them in* (:mod:`.intake`: parse, pixel budget, decode)
on a prefetch thread while the device *scores* the previous batch (:mod:`.scorer`); dead-letter what
cannot be scored (:mod:`.dead_letters`); *flush* the verdict rows to a durable Parquet part and only then
*acknowledge* their entries (:mod:`.flush`); *beat* (:mod:`.heartbeat`). Every Redis call goes through
one policy (:mod:`.redis_calls`). A crash anywhere leaves unacknowledged entries pending, to be scored
again by this worker on restart or by another one after ``claim_idle_ms``: at-least-once. With
``--keep-images`` an :class:`~ear_stream.io.keeping.ImageKeeper` keeps the flagged (and sampled passed)
payloads: put on its thread after scoring, settled before the flush, pruned at most once a minute.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..io.keeping import ImageKeeper
from ..io.store import Usage
from ..model.deployment import CANDIDATES
from . import queue as q
from .dead_letters import DeadLetters
from .drift import DriftMonitor
from .flush import VerdictBuffer
from .heartbeat import Heartbeat
from .intake import Frame, Intake, Prepared
from .metrics import WorkerMetrics
from .models import ModelRegistry, UnknownProduct, check_models_dir
from .payloads import PayloadFetcher
from .redis_calls import STOPPING_RETRIES, RedisCalls
from .scorer import LastErrors, Scorer
from .settings import WorkerConfig, default_worker_name
from .tuning import process_age_s, return_large_frees_to_the_os

__all__ = [
    "STOPPING_RETRIES",
    "Frame",
    "ModelRegistry",
    "Prepared",
    "UnknownProduct",
    "Worker",
    "WorkerConfig",
    "default_worker_name",
]

log = logging.getLogger("ear_stream.stream.worker")

#: test hook: SIGKILL this process at a named point (before_score, before_flush, before_ack)
FAULT_POINT_ENV, FAULT_AFTER_ENV = "EAR_FAULT_POINT", "EAR_FAULT_AFTER"


class Worker:
    """Scores stream entries until stopped (SIGTERM/SIGINT, :meth:`stop`, or idle timeout)."""

    def __init__(
        self, cfg: WorkerConfig, registry: ModelRegistry | None = None, metrics: WorkerMetrics | None = None
    ) -> None:
        if registry is None:
            check_models_dir(cfg.models_dir)  # a worker with no model refuses to start, before Redis is touched
        self.cfg = cfg
        self.scfg = cfg.stream
        return_large_frees_to_the_os()
        self.client = q.connect(cfg.redis_url)
        self.models = registry or ModelRegistry.for_worker(cfg)
        self.metrics = metrics or WorkerMetrics(cfg.name)  # shared by the shards of a ShardedWorker
        self.stats: dict[str, Any] = {
            "scored": 0,
            "dead_letters": 0,
            "batches": 0,
            "flushes": 0,
            "reconnects": 0,
            "redis_oom": 0,
            "results_skipped_oom": 0,
        }
        self._stop = threading.Event()
        self.calls = RedisCalls(
            self.client, self.scfg, stopping=self._stop.is_set, on_retry=self._count_retry, on_full=self._count_full
        )
        #: stream ids fetched and not yet acknowledged or dead-lettered (shared by the stages below)
        self.held: set[str] = set()
        self.drift = DriftMonitor(cfg.drift_window, cfg.drift_alert, cfg.drift_shift)
        last_errors = LastErrors()
        self.keeper = self._image_keeper()
        spill = q.DeadLetterSpill(cfg.dlq_spill_dir or q.default_spill_dir(cfg.out_dir))
        self.letters = DeadLetters(self.calls, self.scfg, cfg.name, spill, self.held, self.stats, self.metrics)
        self.payloads = self._payload_fetcher()
        self.intake = Intake(cfg, self.models, last_errors, self.payloads)
        shadow = ModelRegistry.for_worker(cfg, cfg.models_dir / CANDIDATES) if cfg.shadow else None
        self.scorer = Scorer(
            cfg.name, self.drift, self.metrics, self.letters.send, self.held, last_errors, self.keeper, shadow
        )
        self.verdicts = VerdictBuffer(
            cfg, self.calls, self.held, self.stats, self.metrics, self._fault, self.keeper,
            acked=self.payloads.release if self.payloads is not None else None,
        )  # fmt: skip
        self.heartbeat = Heartbeat(
            self.client, self.scfg, cfg.name, cfg.heartbeat_every_s, self.models, self.drift, self.stats, self.metrics
        )
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="ear-prefetch")
        self._last_claim = 0.0
        self._recovery_cursor: str | None = "0"  # own pending entries are re-read once, at start
        self._fault_point = os.environ.get(FAULT_POINT_ENV)
        self._fault_after = int(os.environ.get(FAULT_AFTER_ENV, "1"))

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Finish the batch in hand, flush, acknowledge and leave."""
        self._stop.set()

    def mark_stopped(self) -> None:
        """Write the clean-exit marker of this worker's heartbeat (after :meth:`run` returned)."""
        q.mark_stopped(self.client, self.scfg, self.cfg.name)

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())

    def _fault(self, point: str) -> None:
        if self._fault_point == point and self.stats["batches"] >= self._fault_after:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _image_keeper(self) -> ImageKeeper | None:
        """The keeper of ``--keep-images``, counted in the stats (heartbeat, ``status``) and the metrics."""
        policy = self.cfg.keep_policy()
        if policy is None:
            return None
        # every key exists before the retention thread writes one: the heartbeat copies the dict meanwhile
        self.stats.update(images_kept=0, image_keep_failures=0, kept_image_bytes=0, kept_image_objects=0)

        def settled(kept: int, failed: int) -> None:
            self.stats["images_kept"] += kept
            self.stats["image_keep_failures"] += failed
            self.metrics.images_kept.inc(kept)
            self.metrics.image_keep_failures.inc(failed)
            self.metrics.image_keep_failing.set(1 if self.keeper is not None and self.keeper.failing else 0)

        def usage(kept: Usage) -> None:  # on the retention thread
            self.stats.update(kept_image_bytes=kept.bytes, kept_image_objects=kept.objects)
            self.metrics.kept_image_bytes.set(kept.bytes)
            self.metrics.kept_image_objects.set(kept.objects)

        return ImageKeeper(policy, on_settled=settled, on_usage=usage)

    def _payload_fetcher(self) -> PayloadFetcher | None:
        """The fetcher of claim-check objects (``--store``), counted in the stats and the metrics."""
        if self.cfg.payload_store is None:
            return None

        def failing(now: bool) -> None:
            self.metrics.payload_fetch_failing.set(1 if now else 0)

        return PayloadFetcher(
            self.cfg.payload_store, self.scfg.max_image_bytes, self.cfg.fetch_threads, self.cfg.payload_after,
            self.stats, failing,
        )  # fmt: skip

    def _count_retry(self) -> None:
        self.stats["reconnects"] += 1
        self.metrics.reconnects.inc()

    def _count_full(self, full: bool) -> None:
        if full:
            self.stats["redis_oom"] += 1
        self.metrics.redis_oom.set(1 if full else 0)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        self._start()
        idle_since = time.monotonic()
        in_flight: Future | None = None
        try:
            while True:
                # with a batch in flight, only take what is already there: blocking would delay its verdicts;
                # while results cannot be written, take nothing new: the rows in hand wait for the disk; nor while
                # claim checks wait for their store: the entries in hand wait for it
                reading = not self._stop.is_set() and not self.verdicts.write_failures and not self.intake.waiting
                entries = self._fetch(may_block=in_flight is None and not self.intake.deferred) if reading else []
                # decode the next batch on the pool while the device scores the previous one
                next_batch = (
                    self._prefetch.submit(self._take_in, entries) if entries or self.intake.has_work() else None
                )
                if in_flight is not None:
                    self._score(in_flight.result())
                in_flight = next_batch
                if entries:
                    idle_since = time.monotonic()
                self._maybe_flush(may_wait=in_flight is None)
                if self.intake.waiting:
                    self._wait_for_store(may_wait=in_flight is None and not self._stop.is_set())
                self.letters.retry()
                if self.keeper is not None:
                    self.keeper.maybe_prune()
                self.heartbeat.maybe_beat()
                if self._stop.is_set() and in_flight is None and not self.letters.parked and not self.intake.deferred:
                    break
                if self._idle_done(idle_since, in_flight):
                    break
        finally:
            self.verdicts.flush()
            if self.keeper is not None:
                self.keeper.prune_now()  # the store is left within its budget, and the last gauge is right
                self.keeper.close()
            self.heartbeat.maybe_beat(force=True)
            self.intake.close()
            self._prefetch.shutdown(wait=True)
        self.metrics.up.set(0)
        log.info("worker %s stopped: %s", self.cfg.name, self.stats)
        return dict(self.stats)

    def _start(self) -> None:
        """Check the server (set-up mistakes fail now, in one line), serve metrics, create the group, warm up."""
        q.verify_connection(self.client, self.cfg.redis_url)
        q.check_same_slot(self.client, self.scfg.stream, self.scfg.dlq)
        with q.setup_errors(self.cfg.redis_url, "read the server's configuration (INFO, CONFIG GET)"):
            q.check_eviction_policy(self.client, self.cfg.allow_eviction)
            no_persistence = q.check_persistence(self.client)
        if no_persistence:
            log.warning("%s", no_persistence)
        if self.letters.spill.files():  # left by a run that Redis was full for (or that was killed): posted first
            log.info(
                "dead letters spilled earlier in %s: posting them once Redis has room", self.letters.spill.directory
            )
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_port, self.cfg.metrics_host)
        self.calls(lambda: q.ensure_group(self.client, self.scfg), "group creation")
        self.stats["warmup_s"] = round(self.models.warm_up(self.cfg.batch_size), 3)
        self.stats["startup_s"] = round(process_age_s(), 3)
        self.metrics.warmup_seconds.set(self.stats["warmup_s"])
        log.info(
            "worker %s ready after %.1fs (model warm-up %.1fs)", self.cfg.name, self.stats["startup_s"],
            self.stats["warmup_s"],
        )  # fmt: skip
        log.info("worker %s reading %s as group %s", self.cfg.name, self.scfg.stream, self.scfg.group)

    def _idle_done(self, idle_since: float, in_flight: Future | None) -> bool:
        """``exit_when_idle_s``: nothing in hand, nothing read for that long, and the stream drained."""
        return (
            self.cfg.exit_when_idle_s is not None
            and in_flight is None
            and not self.verdicts.rows
            and not self.intake.deferred
            and not self.intake.waiting
            and time.monotonic() - idle_since >= self.cfg.exit_when_idle_s
            and self.calls(lambda: q.backlog(self.client, self.scfg), "backlog") == (0, 0)
        )

    # ------------------------------------------------------------------ read
    def _fetch(self, may_block: bool = True) -> list[q.Entry]:
        entries = [e for e in self._fetch_raw(may_block) if e.stream_id not in self.held]
        self.held.update(e.stream_id for e in entries)
        return entries

    def _fetch_raw(self, may_block: bool = True) -> list[q.Entry]:
        """Own pending entries first (restart after a crash), then idle ones of others, then new ones.

        XAUTOCLAIM may also return entries this worker holds itself (buffered longer
        than ``claim_idle_ms``); :meth:`_fetch` drops those so nothing is scored twice here.
        """
        n, name = self.cfg.batch_size, self.cfg.name
        if self._recovery_cursor is not None:
            cursor = self._recovery_cursor
            own = self.calls(lambda: q.read_own_pending(self.client, self.scfg, name, n, cursor), "recovery")
            self._recovery_cursor = own[-1].stream_id if own else None
            if own:
                log.info("re-scoring %d entries this worker had not acknowledged", len(own))
                return own
        now = time.monotonic()
        if now - self._last_claim >= self.cfg.claim_every_s:
            self._last_claim = now
            claimed, deleted = self.calls(lambda: q.claim_idle(self.client, self.scfg, name, n), "claim")
            if deleted:  # deleted from the stream while pending (an external XDEL or MAXLEN): nothing to score
                log.warning("%d pending entries were trimmed from the stream before scoring", len(deleted))
                self.calls(lambda: q.ack(self.client, self.scfg, deleted), "ack of trimmed entries")
            if claimed:
                return claimed
        block = self._block_ms(may_block) or None
        return self.calls(lambda: q.read_new(self.client, self.scfg, name, n, block), "read")

    def _block_ms(self, may_block: bool) -> int:
        """How long XREADGROUP may wait: never past the flush deadline, which bounds verdict latency."""
        if not may_block or self.verdicts.due():
            return 0
        if not self.verdicts.rows:
            return self.cfg.block_ms
        return max(1, min(self.cfg.block_ms, int((self.cfg.flush_seconds - self.verdicts.waited_s()) * 1000)))

    # ------------------------------------------------------------------ take in, score, flush
    def _take_in(self, entries: list[q.Entry]) -> Prepared:
        """On the prefetch thread: parse, budget and decode; the rejected entries are dead-lettered now."""
        prepared = self.intake.prepare(entries)
        self.letters.send(prepared.rejections)
        return prepared

    def _score(self, prepared: Prepared) -> None:
        # flush first when the deadline would pass while this batch is scored: the
        # flush interval then bounds verdict latency instead of flush + one batch
        if prepared.items and self.verdicts.due(ahead=self.scorer.batch_s):
            self.verdicts.flush()
        if not prepared.items:
            return
        self.stats["batches"] += 1
        self._fault("before_score")
        self.verdicts.add(*self.scorer.score(prepared))
        self._fault("before_flush")

    def _wait_for_store(self, may_wait: bool) -> None:
        """Claim checks wait for their store: keep them (and all held entries) claimed; with nothing in flight,
        sleep until their retry is due (at most 0.2 s, so stopping and heartbeats stay prompt)."""
        self.verdicts.keep_held_claimed()
        if may_wait and self.payloads is not None:
            self._stop.wait(min(0.2, self.payloads.retry_in()))

    def _maybe_flush(self, may_wait: bool) -> None:
        """Flush when due (or stopping); after a failed write keep the entries ours and, with nothing in
        flight, wait for the retry (nothing is read meanwhile)."""
        if self.verdicts.due() or (self._stop.is_set() and self.verdicts.rows):
            self.verdicts.flush()
        if self.verdicts.write_failures:
            self.verdicts.keep_held_claimed()
            if may_wait:
                self._stop.wait(max(0.0, min(0.2, self.verdicts.write_retry_at - time.monotonic())))
