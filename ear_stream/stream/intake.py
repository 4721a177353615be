"""Intake: from delivered stream entries to what the device scores (docs/design.md, "Decoding").

Per batch, on the worker's prefetch thread while the device scores the previous batch:

1. *parse* each entry (fields, sizes, product name) and find its product's model, once per product
   (:class:`~.models.BatchModels`); an entry delivered too often, malformed, or for a product without a
   usable model becomes a :class:`~.protocol.Rejection` (its dead letter); a claim check's object is
   fetched and verified (:class:`~.payloads.PayloadFetcher`; a store that cannot be reached leaves the
   entry waiting there, never a dead letter);
2. keep the batch within its *pixel budget* (``max_batch_pixels``, from the image headers): entries past it
   wait, still pending and held, at the head of the next batch, so memory follows pixels, not entries;
3. *decode* on a thread pool, towards each model's size (a whole-image model gets [1, 3, S, S] tensors, not
   full-size pixels), giant frames one at a time; whatever goes wrong is that entry's dead letter.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..inspect.pipeline import Pipeline
from ..io.decode import ImageDecodeError, decode_frame, frame_issue, header_size
from . import queue as q
from .models import BatchModels, ModelRegistry, UnknownProduct
from .payloads import PayloadFetcher
from .scorer import LastErrors
from .settings import WorkerConfig

#: frames above this many pixels are decoded one at a time (a PNG is decoded at full size before reduction)
HUGE_FRAME_PIXELS = 16_000_000


@dataclass
class Frame:
    """One decoded entry: its pixels ([1, 3, S, S] tensor for whole-image models, the [H, W, 3] array for
    native ones), the image's own (height, width), and why it cannot be a part (None when it can)."""

    pixels: Any
    size: tuple[int, int]
    issue: str | None = None


@dataclass
class Prepared:
    """A batch after validation and decoding: what the device should score, and with which pipelines.

    ``pipes`` holds each product's pipeline as looked up for this batch: the frames were decoded for it, and
    they are scored by it, even if a reload lands meanwhile.
    """

    items: list[tuple[q.ValidEntry, Frame]] = field(default_factory=list)
    pipes: dict[str, Pipeline] = field(default_factory=dict)
    rejections: list[q.Rejection] = field(default_factory=list)


class Intake:
    """Parses, budgets and decodes batches for one worker; owns the decode pool and the deferred entries."""

    def __init__(
        self,
        cfg: WorkerConfig,
        models: ModelRegistry,
        last_errors: LastErrors,
        payloads: PayloadFetcher | None = None,
    ) -> None:
        self.cfg, self.scfg = cfg, cfg.stream
        self.models = models
        self.last_errors = last_errors
        self.payloads = payloads
        #: validated entries past the previous batch's pixel budget, next in line (pending and held)
        self.deferred: list[q.ValidEntry] = []
        self._pool = ThreadPoolExecutor(max(1, cfg.decode_threads), thread_name_prefix="ear-decode")
        self._huge_decode = threading.Lock()

    def prepare(self, entries: list[q.Entry]) -> Prepared:
        """Validate and decode ``entries`` after the deferred ones; the rejected ones come back as rejections."""
        pipes = BatchModels(self.models)
        prepared = Prepared()
        valid: list[q.ValidEntry] = []
        for e in entries:
            admitted = self._admit(e, pipes)
            if isinstance(admitted, q.Rejection):
                prepared.rejections.append(admitted)
            else:
                valid.append(admitted)
        valid = self._fetched(valid, prepared.rejections)
        now = self._within_pixel_budget(self.deferred + valid, pipes, prepared.rejections)
        decoded = list(self._pool.map(self._decode, [ve for ve, _ in now], [pipe for _, pipe in now]))
        for (ve, _), result in zip(now, decoded, strict=True):
            if isinstance(result, q.Rejection):
                prepared.rejections.append(result)
            else:
                prepared.items.append((ve, result))
        prepared.pipes = pipes.pipes
        return prepared

    @property
    def waiting(self) -> bool:
        """Claim checks wait for their store (held: the worker keeps them claimed and reads nothing new)."""
        return self.payloads is not None and bool(self.payloads.waiting)

    def has_work(self) -> bool:
        """Entries in hand that a :meth:`prepare` with no new ones would take further now."""
        return bool(self.deferred) or (self.payloads is not None and self.payloads.due())

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.payloads is not None:
            self.payloads.close()

    def _fetched(self, valid: list[q.ValidEntry], rejections: list[q.Rejection]) -> list[q.ValidEntry]:
        """``valid`` with every claim check's payload fetched (those waiting for the store are held back)."""
        if self.payloads is None:
            unresolved = [ve for ve in valid if ve.ref is not None]
            rejections += [
                q.Rejection(
                    ve.entry,
                    q.PAYLOAD_INVALID,
                    "a claim-check entry (uri, sha256, bytes), and this worker has no --store to fetch it from: "
                    "start the workers with --store URI, then `ear-stream dlq replay`",
                )
                for ve in unresolved
            ]
            return [ve for ve in valid if ve.ref is None]
        ready, refused = self.payloads.fetch(valid)
        rejections += refused
        return ready

    def _admit(self, e: q.Entry, pipes: BatchModels) -> q.ValidEntry | q.Rejection:
        """The entry's checked fields, or why it is dead-lettered (too many deliveries, a field, its model)."""
        if e.deliveries > self.scfg.max_deliveries:
            last = self.last_errors.pop(e.stream_id)
            message = f"delivered {e.deliveries} times" + (f"; last error: {last}" if last else "")
            return q.Rejection(e, q.MAX_DELIVERIES, message)
        try:
            ve = q.parse_entry(e, self.scfg.max_image_bytes)
        except q.ValidationError as exc:
            return q.Rejection(e, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a field no check foresaw breaks a parser: its dead letter, not a crash
            return q.Rejection(e, q.INVALID_FIELD, f"cannot read the entry's fields: {type(exc).__name__}: {exc}"[:500])
        found = pipes.lookup(ve.product)
        return _no_model(e, found) if isinstance(found, Exception) else ve

    def _within_pixel_budget(
        self, valid: list[q.ValidEntry], pipes: BatchModels, rejections: list[q.Rejection]
    ) -> list[tuple[q.ValidEntry, Pipeline]]:
        """The entries to decode now (at least one), with their pipeline; the rest wait in :attr:`deferred`."""
        keep: list[tuple[q.ValidEntry, Pipeline]] = []
        total = 0
        for i, ve in enumerate(valid):
            pipe = pipes.lookup(ve.product)  # deferred entries are looked up again: the model may have moved on
            if isinstance(pipe, Exception):
                rejections.append(_no_model(ve.entry, pipe))
                continue
            pixels = self._pixels(ve, pipe)
            if keep and total + pixels > self.cfg.max_batch_pixels:
                self.deferred = valid[i:]
                return keep
            keep.append((ve, pipe))
            total += pixels
        self.deferred = []
        return keep

    @staticmethod
    def _pixels(ve: q.ValidEntry, pipe: Pipeline) -> int:
        """Pixels decoding this entry will hold: its header's, or a whole-image model's reduced decode."""
        size = header_size(ve.image) or (ve.ref.size if ve.ref is not None else None)
        if size is None:
            return 0
        if pipe.decode_target is None:
            return int(size[0] * size[1] * float(pipe.config.scale or 1.0) ** 2)
        return min(size[0] * size[1], (8 * pipe.decode_target) ** 2)

    def _decode(self, ve: q.ValidEntry, pipe: Pipeline) -> Frame | q.Rejection:
        """Decode one entry on the pool, guarded: whatever goes wrong is this entry's dead letter.

        Whole-image models get the frame decoded towards their size and resized here, so a batch holds
        [3, S, S] tensors, not full-size pixels (docs/design.md, "Decoding").
        """
        try:
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


def _no_model(e: q.Entry, exc: Exception) -> q.Rejection:
    """The dead letter of an entry whose product has no usable model: unknown, or any failure to build it."""
    if isinstance(exc, UnknownProduct):
        return q.Rejection(e, q.UNKNOWN_PRODUCT, str(exc))
    return q.Rejection(e, q.MODEL_ERROR, f"model for {e.fields.get('product')!r}: {type(exc).__name__}: {exc}")
