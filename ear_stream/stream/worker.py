"""The stream worker loop (docs/design.md, "Redis protocol"): one process, used by ``ear-stream worker`` and the Ray actors.

Per iteration: reclaim idle entries (XAUTOCLAIM) from time to time, read new ones
(XREADGROUP), validate and decode them on a thread pool while the device scores
the previous batch, dead-letter what cannot be scored, buffer verdict rows, and
flush them to a durable Parquet part before acknowledging the entries. A crash
anywhere leaves unacknowledged entries pending, to be scored again by this
worker on restart or by another one after ``claim_idle_ms``: at-least-once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import redis
import torch
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import EarStreamError
from ..inspect.pipeline import Pipeline
from ..inspect.scoring import result_rows
from ..io.decode import ImageDecodeError, decode_frame, frame_issue, header_size
from ..io.labels import weights_of
from ..io.results import ResultWriter
from ..model.artifact import MANIFEST_FILE, load_manifest
from ..model.config import DEFAULT_PRECISION
from . import queue as q
from .drift import DriftMonitor
from .metrics import WorkerMetrics
from .settings import WorkerConfig, default_worker_name

__all__ = ["ModelRegistry", "Worker", "WorkerConfig", "default_worker_name"]

log = logging.getLogger("ear_stream.stream.worker")


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc/self/stat), else since this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


_IMPORTED_AT = time.monotonic()


def return_large_frees_to_the_os(threshold: int = 8 << 20) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes and more with mmap, and hand them back on free.

    Decoding a 6000×6000 frame allocates ~150 MB in Pillow's 16 MB blocks; with glibc's dynamic mmap
    threshold those blocks come from per-thread heaps that keep the memory after the frame is gone, so
    a worker's RSS grew with every decode thread that ever held a giant frame. A fixed threshold
    returns it. Linux/glibc only; elsewhere nothing changes (returns False).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


#: frames above this many pixels are decoded one at a time (a PNG is decoded at full size before reduction)
HUGE_FRAME_PIXELS = 16_000_000
T = TypeVar("T")
#: tries a stopping worker still gives an unreachable Redis (waits of 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s)
STOPPING_RETRIES = 5
#: a results write that failed (full disk, store down) is retried after 0.5 s, doubling to at most 30 s
WRITE_BACKOFF_S, WRITE_BACKOFF_CAP_S = 0.5, 30.0
#: test hook: SIGKILL this process at a named point (before_score, before_flush, before_ack)
FAULT_POINT_ENV, FAULT_AFTER_ENV = "EAR_FAULT_POINT", "EAR_FAULT_AFTER"


@dataclass
class Prepared:
    """A batch after validation and decoding: what the device should score."""

    items: list[tuple[q.ValidEntry, Any]] = field(default_factory=list)


class UnknownProduct(EarStreamError, LookupError):
    pass


@dataclass
class Frame:
    """One decoded entry: its pixels ([1, 3, S, S] tensor for whole-image models, the [H, W, 3] array for
    native ones), the image's own (height, width), and why it cannot be a part (None when it can)."""

    pixels: Any
    size: tuple[int, int]
    issue: str | None = None


class ModelRegistry:
    """One pipeline per product from ``MODELS_DIR/<product>/``, loaded on first use."""

    def __init__(
        self,
        models_dir: Path,
        device: str,
        dino_weights: Path | None,
        tile: int | None = None,
        tile_overlap: int | None = None,
        threshold: float | None = None,
        reload_every_s: float = 2.0,
        precision: str = DEFAULT_PRECISION,
        compile: bool = False,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.precision = precision
        self.compile = compile
        self.device = device
        self.dino_weights = dino_weights
        self.tiling = (tile, tile_overlap)
        self.threshold = threshold
        self.reload_every_s = reload_every_s
        self._stamps: dict[str, tuple[float, tuple[int, int]]] = {}  # product → (last check, manifest stat)
        self._pipes: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        #: product → why its latest manifest did not load (the previous model keeps scoring); empty when all did
        self.reload_errors: dict[str, str] = {}
        self.reload_failures = 0

    def get(self, product: str) -> Pipeline:
        with self._lock:
            if product not in self._pipes:
                path = self.models_dir / product  # product names are validated: no path traversal
                if not (path / "manifest.json").is_file():
                    raise UnknownProduct(f"no model for product {product!r} in {self.models_dir}")
                self._pipes[product] = self._load(path)
                self._stamps[product] = (time.monotonic(), self._stat(path))
            elif time.monotonic() - self._stamps[product][0] >= self.reload_every_s:
                self._maybe_reload(product)
            return self._pipes[product]

    def _load(self, path: Path) -> Pipeline:
        return Pipeline.from_artifact(
            path,
            self.device,
            self.dino_weights,
            *self.tiling,
            threshold=self.threshold,
            precision=self.precision,
            compile=self.compile,
        )

    def warm_up(self, batch_size: int) -> float:
        """Load every model in the folder and score blank batches (compilation, kernel selection) before the
        first read, so the first real entries do not pay for it; returns seconds. A model that fails to load
        is left for its entries to dead-letter as ``model_error``."""
        started = time.monotonic()
        for path in sorted(p for p in self.models_dir.iterdir() if (p / MANIFEST_FILE).is_file()):
            try:
                pipe = self.get(path.name)
                seconds = pipe.warm_up((1, max(2, min(batch_size, 8))))
                log.info("%s: warmed up in %.1fs (%s)", path.name, seconds, pipe.precision.describe())
            except Exception as exc:  # noqa: BLE001 - any failure here is reported per entry later
                log.warning("%s: not warmed up (%s)", path.name, exc)
        return time.monotonic() - started

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        st = (path / MANIFEST_FILE).stat()
        return st.st_mtime_ns, st.st_size

    def _maybe_reload(self, product: str) -> None:
        """Pick up ``ear-stream threshold`` revisions (new thresholds only) or new weights or config (full reload).

        Whatever goes wrong reading the new manifest or weights — a half-written file, a hostile manifest, a
        weights file that does not fit — the model in hand keeps scoring; the failure is logged once per
        distinct error, counted, and shown in :attr:`reload_errors` (heartbeat, ``status``) until a reload works.
        """
        path = self.models_dir / product
        stat = self._stamps[product][1]
        try:
            stat = self._stat(path)
            if stat == self._stamps[product][1]:
                self._stamps[product] = (time.monotonic(), stat)
                return
            manifest = load_manifest(path)
            pipe = self._pipes[product]
            if weights_of(manifest.model_version) == weights_of(pipe.model_version):
                pipe.apply_thresholds(manifest, self.threshold)
                log.info("%s: thresholds revised (image %.5g, version %s)", product, pipe.threshold, pipe.model_version)
            else:
                self._pipes[product] = self._load(path)
                log.info("%s: new model loaded (version %s)", product, self._pipes[product].model_version)
            if self.reload_errors.pop(product, None) is not None:
                log.info("%s: reloading works again", product)
        except Exception as exc:  # noqa: BLE001 - a bad model file never stops good scoring
            message = f"{type(exc).__name__}: {exc}"[:500]
            if self.reload_errors.get(product) != message:
                log.warning("%s: not reloading, the model in hand keeps scoring (%s)", product, message)
            self.reload_errors[product] = message
            self.reload_failures += 1
        self._stamps[product] = (time.monotonic(), stat)

    def known(self) -> list[str]:
        return sorted(self._pipes)


class Worker:
    """Scores stream entries until stopped (SIGTERM/SIGINT, :meth:`stop`, or idle timeout)."""

    def __init__(self, cfg: WorkerConfig, registry: ModelRegistry | None = None) -> None:
        self.cfg = cfg
        self.scfg = cfg.stream
        return_large_frees_to_the_os()
        self.client = q.connect(cfg.redis_url)
        self.models = registry or ModelRegistry(
            cfg.models_dir,
            cfg.device,
            cfg.dino_weights,
            cfg.tile,
            cfg.tile_overlap,
            cfg.threshold,
            cfg.reload_every_s,
            cfg.precision,
            cfg.compile,
        )
        self.drift = DriftMonitor(cfg.drift_window, cfg.drift_alert)
        self._alerting: set[str] = set()
        self.writer = ResultWriter(cfg.out_dir, cfg.name)
        self.metrics = WorkerMetrics(cfg.name)
        self.stats = {
            "scored": 0,
            "dead_letters": 0,
            "batches": 0,
            "flushes": 0,
            "reconnects": 0,
            "redis_oom": 0,
            "results_skipped_oom": 0,
        }
        self._oom = False
        #: the last scoring error per pending stream id: a max_deliveries dead letter says what went wrong
        self._last_errors: dict[str, str] = {}
        self._huge_decode = threading.Lock()
        self._deferred: list[q.ValidEntry] = []  # validated entries past the batch's pixel budget, next in line
        self._parked: list[q.Rejection] = []  # dead letters a full Redis refused and no disk took: retried
        self._parked_lock = threading.Lock()
        #: dead letters a full Redis refused, on local disk until it has room (WorkerConfig.dlq_spill_dir)
        self._parked_spill = q.DeadLetterSpill(cfg.dlq_spill_dir or q.default_spill_dir(cfg.out_dir))
        self._last_parked_try = 0.0
        self._rows: list[dict[str, Any]] = []
        self._unacked: list[str] = []
        self._first_buffered: float | None = None
        self._batch_s = 0.0  # moving average of one batch's scoring time
        self._stop = threading.Event()
        self._decode_pool = ThreadPoolExecutor(max(1, cfg.decode_threads), thread_name_prefix="ear-decode")
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="ear-prefetch")
        self._last_claim = 0.0
        self._recovery_cursor: str | None = "0"  # own pending entries are re-read once, at start
        self._held: set[str] = set()  # stream ids fetched and not yet acknowledged or dead-lettered
        self._last_heartbeat = 0.0
        #: consecutive failed results writes (0: writing works); while > 0 nothing new is read
        self._write_failures = 0
        self._write_retry_at = 0.0
        self._last_touch = 0.0
        self._fault_point = os.environ.get(FAULT_POINT_ENV)
        self._fault_after = int(os.environ.get(FAULT_AFTER_ENV, "1"))

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Finish the batch in hand, flush, acknowledge and leave."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())

    def _fault(self, point: str) -> None:
        if self._fault_point == point and self.stats["batches"] >= self._fault_after:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _note_oom(self, what: str, exc: Exception) -> None:
        """Redis is full (noeviction at maxmemory): say so once per episode, count it, expose it."""
        if not self._oom:
            log.warning("redis is full during %s (%s): backing off; nothing is dropped", what, exc)
        self._oom = True
        self.stats["redis_oom"] += 1
        self.metrics.redis_oom.set(1)

    def _oom_cleared(self) -> None:
        if self._oom:
            log.info("redis accepts writes again")
        self._oom = False
        self.metrics.redis_oom.set(0)

    def _redis(self, fn: Callable[[], T], what: str, raise_oom: bool = False) -> T:
        """Run a Redis call under redis-py's :class:`~redis.retry.Retry` (exponential backoff, 0.1 s to 5 s,
        for as long as it takes); recreates a lost consumer group.

        A full Redis (``OOM command not allowed``) is waited out the same way, unless ``raise_oom``:
        the caller then keeps what it wanted to write (dead letters are parked, see :meth:`_dead_letter`).
        A refused password is never retried; a stopping worker gives up after a few tries.
        """
        retried = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        if not raise_oom:
            retried += (redis.OutOfMemoryError,)

        def attempt() -> T:
            try:
                return fn()
            except redis.exceptions.NoPermissionError as exc:
                raise q.permission_error(exc, what) from None
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc) or isinstance(exc, redis.OutOfMemoryError):
                    raise
                log.warning("consumer group missing during %s; recreating it", what)
                q.ensure_group(self.client, self.scfg)
                return fn()

        def failed(exc: Exception, failures: int) -> None:
            if isinstance(exc, redis.OutOfMemoryError):
                self._note_oom(what, exc)
            elif self._stop.is_set() and failures > STOPPING_RETRIES:
                raise exc
            else:
                log.warning("redis unavailable during %s (%s); retrying", what, exc)
            self.stats["reconnects"] += 1
            self.metrics.reconnects.inc()

        def retryable(exc: Exception) -> bool:
            return not isinstance(exc, redis.AuthenticationError)  # a refused password stays refused

        policy = Retry(ExponentialBackoff(cap=5.0, base=0.05), retries=-1, supported_errors=retried)
        return policy.call_with_retry(attempt, failed, is_retryable=retryable, with_failure_count=True)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        q.verify_connection(self.client, self.cfg.redis_url)  # set-up mistakes (ACL, replica) fail now, in one line
        with q.setup_errors(self.cfg.redis_url, "read the server's configuration (INFO, CONFIG GET)"):
            q.check_eviction_policy(self.client, self.cfg.allow_eviction)
            no_persistence = q.check_persistence(self.client)
        if no_persistence:
            log.warning("%s", no_persistence)
        if self._parked_spill.files():  # left by a run that Redis was full for (or that was killed): posted first
            log.info(
                "dead letters spilled earlier in %s: posting them once Redis has room", self._parked_spill.directory
            )
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_port, self.cfg.metrics_host)
        self._redis(lambda: q.ensure_group(self.client, self.scfg), "group creation")
        self.stats["warmup_s"] = round(self.models.warm_up(self.cfg.batch_size), 3)
        self.stats["startup_s"] = round(process_age_s(), 3)
        self.metrics.warmup_seconds.set(self.stats["warmup_s"])
        log.info(
            "worker %s ready after %.1fs (model warm-up %.1fs)", self.cfg.name, self.stats["startup_s"],
            self.stats["warmup_s"],
        )  # fmt: skip
        log.info("worker %s reading %s as group %s", self.cfg.name, self.scfg.stream, self.scfg.group)
        idle_since = time.monotonic()
        in_flight: Future | None = None
        try:
            while True:
                # with a batch in flight, only take what is already there: blocking would delay its verdicts
                # while results cannot be written, take nothing new: the rows in hand wait for the disk
                reading = not self._stop.is_set() and not self._write_failures
                entries = self._fetch(may_block=in_flight is None and not self._deferred) if reading else []
                # decode the next batch on the pool while the device scores the previous one
                next_batch = self._prefetch.submit(self._prepare, entries) if entries or self._deferred else None
                if in_flight is not None:
                    prepared = in_flight.result()
                    # flush first when the deadline would pass while this batch is scored: the
                    # flush interval then bounds verdict latency instead of flush + one batch
                    if prepared.items and self._flush_due(ahead=self._batch_s):
                        self._flush()
                    self._score(prepared)
                in_flight = next_batch
                if entries:
                    idle_since = time.monotonic()
                self._maybe_flush()
                if self._write_failures:  # nothing is read meanwhile: wait for the retry, keep the entries ours
                    self._keep_held_claimed()
                    if in_flight is None:
                        self._stop.wait(max(0.0, min(0.2, self._write_retry_at - time.monotonic())))
                self._retry_parked()
                self._maybe_heartbeat()
                if self._stop.is_set() and in_flight is None and not self._parked and not self._deferred:
                    break
                idle_for = time.monotonic() - idle_since
                if (
                    self.cfg.exit_when_idle_s is not None
                    and in_flight is None
                    and not self._rows
                    and not self._deferred
                    and idle_for >= self.cfg.exit_when_idle_s
                    and self._drained()
                ):
                    break
        finally:
            self._flush()
            self._maybe_heartbeat(force=True)
            self._decode_pool.shutdown(wait=True)
            self._prefetch.shutdown(wait=True)
        self.metrics.up.set(0)
        log.info("worker %s stopped: %s", self.cfg.name, self.stats)
        return dict(self.stats)

    def _drained(self) -> bool:
        lag, pending = self._redis(lambda: q.backlog(self.client, self.scfg), "backlog")
        return lag == 0 and pending == 0

    def _fetch(self, may_block: bool = True) -> list[q.Entry]:
        entries = [e for e in self._fetch_raw(may_block) if e.stream_id not in self._held]
        self._held.update(e.stream_id for e in entries)
        return entries

    def _fetch_raw(self, may_block: bool = True) -> list[q.Entry]:
        """Own pending entries first (restart after a crash), then idle ones of others, then new ones.

        XAUTOCLAIM may also return entries this worker holds itself (buffered longer
        than ``claim_idle_ms``); :meth:`_fetch` drops those so nothing is scored twice here.
        """
        n = self.cfg.batch_size
        if self._recovery_cursor is not None:
            cursor = self._recovery_cursor
            own = self._redis(lambda: q.read_own_pending(self.client, self.scfg, self.cfg.name, n, cursor), "recovery")
            self._recovery_cursor = own[-1].stream_id if own else None
            if own:
                log.info("re-scoring %d entries this worker had not acknowledged", len(own))
                return own
        now = time.monotonic()
        if now - self._last_claim >= self.cfg.claim_every_s:
            self._last_claim = now
            claimed, deleted = self._redis(lambda: q.claim_idle(self.client, self.scfg, self.cfg.name, n), "claim")
            if deleted:  # deleted from the stream while pending (an external XDEL or MAXLEN): nothing to score
                log.warning("%d pending entries were trimmed from the stream before scoring", len(deleted))
                self._redis(lambda: q.ack(self.client, self.scfg, deleted), "ack of trimmed entries")
            if claimed:
                return claimed
        return self._redis(
            lambda: q.read_new(self.client, self.scfg, self.cfg.name, n, self._block_ms(may_block) or None), "read"
        )

    def _block_ms(self, may_block: bool) -> int:
        """How long XREADGROUP may wait: never past the flush deadline, which bounds verdict latency."""
        if not may_block or self._flush_due():
            return 0
        if not self._rows:
            return self.cfg.block_ms
        waited = time.monotonic() - (self._first_buffered or time.monotonic())
        return max(1, min(self.cfg.block_ms, int((self.cfg.flush_seconds - waited) * 1000)))

    # ------------------------------------------------------------------ stages
    def _prepare(self, entries: list[q.Entry]) -> Prepared:
        """Validate and decode; rejected entries go to the DLQ now (nothing to write for them)."""
        rejections: list[q.Rejection] = []
        valid: list[q.ValidEntry] = []
        for e in entries:
            if e.deliveries > self.scfg.max_deliveries:
                last = self._last_errors.pop(e.stream_id, None)
                message = f"delivered {e.deliveries} times" + (f"; last error: {last}" if last else "")
                rejections.append(q.Rejection(e, q.MAX_DELIVERIES, message))
                continue
            try:
                ve = q.parse_entry(e, self.scfg.max_image_bytes)
                self.models.get(ve.product)
                valid.append(ve)
            except q.ValidationError as exc:
                rejections.append(q.Rejection(e, exc.reason, str(exc)))
            except UnknownProduct as exc:
                rejections.append(q.Rejection(e, q.UNKNOWN_PRODUCT, str(exc)))
            except Exception as exc:  # noqa: BLE001 - any failure to build a model is model_error, never a crash
                rejections.append(
                    q.Rejection(e, q.MODEL_ERROR, f"model for {e.fields.get('product')!r}: {type(exc).__name__}: {exc}")
                )
        valid = self._within_pixel_budget(self._deferred + valid)
        decoded = list(self._decode_pool.map(self._decode, valid))
        prepared = Prepared()
        for ve, result in zip(valid, decoded, strict=True):
            if isinstance(result, q.Rejection):
                rejections.append(result)
            else:
                prepared.items.append((ve, result))
        self._dead_letter(rejections)
        return prepared

    def _pixels(self, ve: q.ValidEntry) -> int:
        """Pixels decoding this entry will hold: its header's, or a whole-image model's reduced decode."""
        size = header_size(ve.image)
        if size is None:
            return 0
        pipe = self.models.get(ve.product)
        if pipe.decode_target is None:
            return int(size[0] * size[1] * float(pipe.config.scale or 1.0) ** 2)
        return min(size[0] * size[1], (8 * pipe.decode_target) ** 2)

    def _within_pixel_budget(self, valid: list[q.ValidEntry]) -> list[q.ValidEntry]:
        """The entries to decode now (at least one); the rest wait in ``_deferred`` for the next batch."""
        total, keep = 0, []
        for i, ve in enumerate(valid):
            pixels = self._pixels(ve)
            if keep and total + pixels > self.cfg.max_batch_pixels:
                self._deferred = valid[i:]
                return keep
            keep.append(ve)
            total += pixels
        self._deferred = []
        return keep

    def _dead_letter(self, rejections: list[q.Rejection]) -> None:
        """DLQ (with the original fields and the reason) and XACK in one step, in the queue module."""
        if not rejections:
            return
        try:
            self._redis(
                lambda: q.dead_letter(self.client, self.scfg, rejections, self.cfg.name), "dead letter", raise_oom=True
            )
        except redis.OutOfMemoryError as exc:
            # Redis is full: the letters go to local disk (fsync'd) and only then are the entries acked and
            # deleted, which frees what big junk holds; the spill is posted once Redis has room (_retry_parked).
            # Without a disk either, the entries stay pending and held here, their letters parked in memory
            # and retried: never dead-lettered as max_deliveries for the server's fault
            self._note_oom("dead letter", exc)
            letters = [q.letter_fields(self.scfg, r, self.cfg.name) for r in rejections]
            try:
                self._parked_spill.write(self.scfg.dlq, self.scfg.dlq_maxlen, letters)
            except OSError as err:
                log.error("cannot spill %d dead letters (%s): their entries stay pending", len(letters), err)
                with self._parked_lock:
                    self._parked.extend(rejections)
                return
            ids = [r.entry.stream_id for r in rejections]
            self._redis(lambda: q.ack(self.client, self.scfg, ids), "ack of spilled dead letters")
            self.stats["dead_letters_spilled"] = self.stats.get("dead_letters_spilled", 0) + len(ids)
            log.info(
                "redis is full: %d dead letters kept in %s until it has room", len(ids), self._parked_spill.directory
            )
        self._held.difference_update(r.entry.stream_id for r in rejections)
        self.stats["dead_letters"] += len(rejections)
        for r in rejections:
            self.metrics.dead_letters(str(r.reason))

    def _retry_parked(self) -> None:
        """Once a second: post the dead letters spilled to disk while Redis was full, retry the parked ones."""
        now = time.monotonic()
        if now - self._last_parked_try < 1.0:
            return
        self._last_parked_try = now
        if not self._parked and not self._parked_spill.files():
            return
        try:
            self._parked_spill.repost(self.client)  # stops at the first file a full Redis refuses
        except redis.RedisError as exc:  # unreachable for now: the files wait for the next try
            log.debug("spilled dead letters not posted yet: %s", exc)
        if self._parked:
            with self._parked_lock:
                parked, self._parked = self._parked, []
            self._dead_letter(parked)
        if not self._parked and not self._parked_spill.files():
            self._oom_cleared()

    def _decode(self, ve: q.ValidEntry) -> Frame | q.Rejection:
        """Decode one entry on the pool, guarded: whatever goes wrong is this entry's dead letter.

        Whole-image models get the frame decoded towards their size and resized here, so a batch holds
        [3, S, S] tensors, not full-size pixels (docs/design.md, "Decoding").
        """
        try:
            pipe = self.models.get(ve.product)
            header = header_size(ve.image)
            if header is not None and header[0] * header[1] > HUGE_FRAME_PIXELS:
                with self._huge_decode:  # one giant frame decoded at a time: its full-size pixels are the peak
                    arr, size = decode_frame(ve.image, self.cfg.max_pixels, pipe.decode_target)
            else:
                arr, size = decode_frame(ve.image, self.cfg.max_pixels, pipe.decode_target)
            if min(size) < self.cfg.min_side:
                return q.Rejection(ve.entry, q.TOO_SMALL, f"image is {size[1]}x{size[0]}, min side {self.cfg.min_side}")
            issue = frame_issue(arr, self.cfg.frame_min_std, self.cfg.frame_max_aspect)
            return Frame(arr if pipe.config.native else pipe.prepare([arr]), size, issue)
        except ImageDecodeError as exc:
            return q.Rejection(ve.entry, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - one entry never stops the loop
            return q.Rejection(ve.entry, q.DECODE_ERROR, f"cannot prepare image: {type(exc).__name__}: {exc}")

    def _score(self, prepared: Prepared) -> None:
        if not prepared.items:
            return
        self.stats["batches"] += 1
        self._fault("before_score")
        started = time.perf_counter()
        by_product: dict[str, list[tuple[q.ValidEntry, Any]]] = {}
        for ve, arr in prepared.items:
            by_product.setdefault(ve.product, []).append((ve, arr))
        for product, items in by_product.items():
            frames: list[Frame] = [f for _, f in items]
            try:
                pipe = self.models.get(product)
                sizes = [f.size for f in frames]
                if pipe.config.native:
                    res = pipe.score_arrays([f.pixels for f in frames], want_regions=True, orig_sizes=sizes)
                else:
                    res = pipe.score_images(torch.cat([f.pixels for f in frames]), want_regions=True, orig_sizes=sizes)
            except Exception as exc:
                log.exception("scoring %d %s images failed; they stay pending", len(items), product)
                for ve, _ in items:  # kept for the dead letter if they never succeed (bounded: oldest dropped)
                    self._last_errors[ve.entry.stream_id] = f"{type(exc).__name__}: {exc}"[:500]
                while len(self._last_errors) > 10_000:
                    self._last_errors.pop(next(iter(self._last_errors)))
                self._held.difference_update(ve.entry.stream_id for ve, _ in items)
                continue
            processed = datetime.now(timezone.utc)
            extras = []
            for ve, frame in items:
                enqueued = ve.entry.enqueued_at(processed)
                extras.append(
                    {
                        "stream_id": ve.entry.stream_id,
                        "enqueued_at": enqueued,
                        "processed_at": processed,
                        "latency_ms": None if enqueued is None else (processed - enqueued).total_seconds() * 1000,
                        "meta": ve.meta,
                        "frame_check": frame.issue,
                    }
                )
            rows = result_rows(pipe, res, [ve.id for ve, _ in items], product, self.cfg.name, extras)
            for extra in extras:
                if extra["latency_ms"] is not None:
                    self.metrics.latency.observe(extra["latency_ms"] / 1000.0)
            finite = res.finite
            self._dead_letter(
                [
                    q.Rejection(ve.entry, q.NON_FINITE_SCORE, f"score {res.scores[i]} from model {pipe.model_version}")
                    for i, (ve, _) in enumerate(items)
                    if not finite[i]
                ]
            )
            self.drift.observe(product, res.scores, pipe.threshold, pipe.calibration)
            self._rows += [row for row, ok in zip(rows, finite, strict=True) if ok]
            self._unacked += [ve.entry.stream_id for (ve, _), ok in zip(items, finite, strict=True) if ok]
        if self._first_buffered is None:
            self._first_buffered = time.monotonic()
        elapsed = time.perf_counter() - started
        self._batch_s = elapsed if self._batch_s == 0.0 else 0.8 * self._batch_s + 0.2 * elapsed
        self.metrics.batch_seconds.observe(elapsed)
        self._fault("before_flush")

    def _drift_reports(self) -> dict[str, dict[str, Any]]:
        """Drift per product, once per heartbeat (not per batch): gauges, the alert log line, the heartbeat field."""
        reports = {}
        for product in self.drift.products():
            rep = reports[product] = self.drift.report(product)
            for q_name in ("p50", "p95"):
                if q_name in rep:
                    self.metrics.score_quantile.labels(self.cfg.name, product, q_name[1:]).set(rep[q_name])
            if "ratio" not in rep:
                continue
            self.metrics.drift_ratio.labels(self.cfg.name, product).set(rep["ratio"])
            if rep["alert"] and product not in self._alerting:
                log.warning(
                    "%s: drift %.2f >= %.2f (good-side p50 %.4g vs %.4g calibrated)",
                    product, rep["ratio"], rep["alert_level"], rep["p50"], rep["calibration_p50"],
                )  # fmt: skip
                self._alerting.add(product)
            elif not rep["alert"]:
                self._alerting.discard(product)
        return reports

    def _flush_due(self, ahead: float = 0.0) -> bool:
        """Rows to flush now: enough of them, or the oldest would wait past flush_seconds within ``ahead``
        (after a failed write: once its backoff has passed)."""
        if not self._rows:
            return False
        if self._write_failures:
            return time.monotonic() >= self._write_retry_at
        waited = time.monotonic() - (self._first_buffered or time.monotonic())
        return len(self._rows) >= self.cfg.flush_rows or waited + ahead >= self.cfg.flush_seconds

    def _maybe_flush(self) -> None:
        if self._flush_due() or (self._stop.is_set() and self._rows):
            self._flush()

    def _flush(self) -> None:
        """Durable Parquet first, then XACK: an entry is acknowledged only once its row is on disk.

        A write that fails (a full disk, a store that is down) keeps the rows in hand and their entries
        pending and held by this worker: nothing is read meanwhile, the write is retried with backoff,
        and the held entries are kept claimed (XCLAIM JUSTID, which does not count a delivery) so that
        neither a restart loop nor another worker turns the worker's own fault into ``max_deliveries``.
        """
        if not self._rows:
            return
        rows, ids = self._rows, self._unacked
        try:
            self.writer.write(rows)
        except OSError as exc:  # ENOSPC, EIO, a store's IOError (pyarrow's are OSError too)
            self._write_failed(exc)
            return
        if self._write_failures:
            log.info("results are written again after %d failed tries", self._write_failures)
            self._write_failures = 0
            self.metrics.results_write_failing.set(0)
        self._fault("before_ack")
        self._rows, self._unacked, self._first_buffered = [], [], None
        try:
            self._redis(lambda: q.ack(self.client, self.scfg, ids), "ack")
            self._held.difference_update(ids)
            try:
                self._redis(lambda: q.publish_results(self.client, self.scfg, rows), "result stream", raise_oom=True)
            except redis.OutOfMemoryError as exc:  # a notification copy; the rows are durable in Parquet
                self._note_oom("result stream", exc)
                self.stats["results_skipped_oom"] += len(rows)
        except redis.RedisError as exc:  # only when stopping with Redis gone: entries will be re-scored
            log.error("could not acknowledge %d entries (%s); they will be scored again", len(ids), exc)
        self.stats["scored"] += len(rows)
        self.stats["flushes"] += 1
        self.metrics.images.inc(len(rows))

    def _write_failed(self, exc: OSError) -> None:
        """Back off after a failed results write: say so once per episode, keep the held entries claimed."""
        if not self._write_failures:
            log.error(
                "cannot write results (%s): %d rows kept, their entries stay pending; retrying with backoff",
                exc, len(self._rows),
            )  # fmt: skip
        self._write_failures += 1
        self.stats["write_failures"] = self.stats.get("write_failures", 0) + 1
        self.metrics.results_write_failing.set(1)
        delay = min(WRITE_BACKOFF_CAP_S, WRITE_BACKOFF_S * 2 ** min(self._write_failures - 1, 16))
        self._write_retry_at = time.monotonic() + delay
        self._keep_held_claimed()

    def _keep_held_claimed(self) -> None:
        """Reset the idle time of the entries this worker holds, at most every half ``claim_idle_ms``."""
        now = time.monotonic()
        if not self._held or now - self._last_touch < self.scfg.claim_idle_ms / 2000:
            return
        self._last_touch = now
        held = sorted(self._held)
        try:
            self._redis(lambda: q.keep_claimed(self.client, self.scfg, self.cfg.name, held), "keep entries claimed")
        except redis.RedisError as exc:  # only when stopping with Redis gone; the entries stay pending anyway
            log.warning("could not keep %d entries claimed (%s)", len(held), exc)

    def _maybe_heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.cfg.heartbeat_every_s:
            return
        self._last_heartbeat = now
        try:
            q.heartbeat(
                self.client,
                self.scfg,
                self.cfg.name,
                {
                    **self.stats,
                    "pid": os.getpid(),
                    "products": ",".join(self.models.known()),
                    "model_errors": json.dumps(self.models.reload_errors),
                    "drift": json.dumps(self._drift_reports()),
                },
            )
            self.metrics.model_reload_errors.set(len(self.models.reload_errors))
            lag, pending = q.backlog(self.client, self.scfg)
            self.metrics.lag.set(lag)
            self.metrics.pending.set(pending)
            mem = q.redis_memory(self.client)
            self.metrics.used_memory.set(mem["used_memory"])
            self.metrics.maxmemory.set(mem["maxmemory"])
            self.metrics.eviction_safe.set(1 if mem["maxmemory_policy"] == "noeviction" else 0)
            for name, length in q.stream_lengths(self.client, self.scfg).items():
                self.metrics.stream_length.labels(self.cfg.name, name).set(length)
        except redis.RedisError as exc:  # the heartbeat never stops the worker
            log.debug("heartbeat failed: %s", exc)
