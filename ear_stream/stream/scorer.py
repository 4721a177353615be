"""Scoring a prepared batch: verdict rows, dead letters for non-finite scores, drift, and what failed.

Frames are scored per product by the pipeline they were decoded for (:attr:`.intake.Prepared.pipes`).
Each scored entry becomes one Parquet row through the one row builder
(:func:`~ear_stream.inspect.scoring.result_rows` → :func:`~ear_stream.io.results.verdict_row`), with the
stream's fields (stream id, enqueue time, latency, meta, frame check). Fail closed: an entry whose score is
NaN or inf gets no row but a ``non_finite_score`` dead letter. The finite scores feed the drift monitor.
With ``--shadow``, each product's refined candidate (``ear-stream refine``) scores the same frames and
its score joins the row (``shadow_score``, ``shadow_version``): the verdict stays the promoted model's, and a
candidate that is missing, broken or of another input size costs its rows their shadow score, nothing else.
With ``--keep-images``, the payload of each flagged row and of the passed review sample goes to the image
keeper here, on the entry's way out of the intake (its ``image`` bytes, as pushed), so the put runs while
the next batch scores; the rows' writer settles it before the row is durable (:mod:`.flush`).
A product whose batch fails to score leaves its entries pending (scored again after ``claim_idle_ms``);
the error is remembered (:class:`LastErrors`) so that their eventual ``max_deliveries`` letter says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..inspect.scoring import result_rows
from ..io.keeping import ImageKeeper
from ..io.results import now_utc
from ..io.store import redacted
from . import queue as q
from .drift import DriftMonitor
from .metrics import WorkerMetrics
from .models import ModelRegistry, UnknownProduct

if TYPE_CHECKING:
    from .intake import Prepared

log = logging.getLogger("ear_stream.stream.worker.scorer")  # a child of the worker's logger, as before the split
#: scoring errors remembered at most (one per pending stream id, oldest dropped first)
MAX_LAST_ERRORS = 10_000
#: after a candidate fails to load or score, its product is scored without a shadow for this long
SHADOW_RETRY_S = 30.0


class LastErrors:
    """The last scoring error per pending stream id: a ``max_deliveries`` dead letter says what went wrong."""

    def __init__(self, limit: int = MAX_LAST_ERRORS) -> None:
        self.limit = limit
        self._errors: dict[str, str] = {}

    def remember(self, stream_ids: list[str], exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"[:500]
        for sid in stream_ids:
            self._errors[sid] = message
        while len(self._errors) > self.limit:
            self._errors.pop(next(iter(self._errors)))

    def pop(self, stream_id: str) -> str | None:
        return self._errors.pop(stream_id, None)


class Scorer:
    """Scores a worker's batches into rows; ``dead_letter`` posts the non-finite ones (the worker's
    :meth:`.dead_letters.DeadLetters.send`), ``held`` is the worker's set of held stream ids."""

    def __init__(
        self,
        worker: str,
        drift: DriftMonitor,
        metrics: WorkerMetrics,
        dead_letter: Callable[[list[q.Rejection]], None],
        held: set[str],
        last_errors: LastErrors,
        keeper: ImageKeeper | None = None,
        shadow: ModelRegistry | None = None,
    ) -> None:
        self.worker = worker
        #: the candidates' registry (``MODELS/.candidates``) with ``--shadow``; product → when it last failed
        self.shadow, self._shadow_failed = shadow, dict[str, float]()
        self.keeper = keeper
        self.drift, self.metrics = drift, metrics
        self.dead_letter = dead_letter
        self.last_errors = last_errors
        self._held = held
        #: moving average of one batch's scoring time (seconds): how far ahead the worker flushes
        self.batch_s = 0.0

    def score(self, prepared: Prepared) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows of the entries that scored finite, and their stream ids (to acknowledge once the rows are durable)."""
        started = time.perf_counter()
        by_product: dict[str, list[tuple[q.ValidEntry, Any]]] = {}
        for ve, frame in prepared.items:
            by_product.setdefault(ve.product, []).append((ve, frame))
        rows: list[dict[str, Any]] = []
        ids: list[str] = []
        for product, items in by_product.items():
            scored = self._score_product(prepared, product, items)
            rows += scored[0]
            ids += scored[1]
        elapsed = time.perf_counter() - started
        self.batch_s = elapsed if self.batch_s == 0.0 else 0.8 * self.batch_s + 0.2 * elapsed
        self.metrics.batch_seconds.observe(elapsed)
        return rows, ids

    def _score_product(
        self, prepared: Prepared, product: str, items: list[tuple[q.ValidEntry, Any]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        frames = [f for _, f in items]
        try:
            pipe = prepared.pipes[product]
            sizes = [f.size for f in frames]
            if pipe.config.native:
                res = pipe.score_arrays([f.pixels for f in frames], want_regions=True, orig_sizes=sizes)
            else:
                res = pipe.score_images(torch.cat([f.pixels for f in frames]), want_regions=True, orig_sizes=sizes)
        except Exception as exc:
            log.exception("scoring %d %s images failed; they stay pending", len(items), product)
            stream_ids = [ve.entry.stream_id for ve, _ in items]
            self.last_errors.remember(stream_ids, exc)  # for the dead letter if they never succeed
            self._held.difference_update(stream_ids)
            return [], []
        processed = now_utc()
        stream_fields = [
            {
                "stream_id": ve.entry.stream_id,
                "enqueued_at": ve.entry.enqueued_at(processed),
                "meta": ve.meta,
                "frame_check": frame.issue,
                "payload_uri": None if ve.ref is None else redacted(ve.ref.uri),
            }
            for ve, frame in items
        ]
        rows = result_rows(
            pipe, res, [ve.id for ve, _ in items], product, self.worker, stream_fields, processed_at=processed
        )
        if self.shadow is not None:
            self._shadow_scores(product, pipe, frames, rows)
        for row in rows:
            if row["latency_ms"] is not None:
                self.metrics.latency.observe(row["latency_ms"] / 1000.0)
        finite = res.finite
        self.dead_letter(
            [
                q.Rejection(ve.entry, q.NON_FINITE_SCORE, f"score {res.scores[i]} from model {pipe.model_version}")
                for i, (ve, _) in enumerate(items)
                if not finite[i]
            ]
        )
        self.drift.observe(product, res.scores, pipe.threshold, pipe.calibration, getattr(res, "features", None))
        kept = [row for row, ok in zip(rows, finite, strict=True) if ok]
        if self.keeper is not None:
            for row, (ve, _), ok in zip(rows, items, finite, strict=True):
                if ok and self.keeper.wants(product, ve.id, row["is_anomaly"]):
                    self.keeper.keep(row, ve.image)  # the original payload, not the resized tensor
        return kept, [ve.entry.stream_id for (ve, _), ok in zip(items, finite, strict=True) if ok]

    def _shadow_scores(self, product: str, pipe: Any, frames: list[Any], rows: list[dict[str, Any]]) -> None:
        """The candidate's scores of the same frames into the rows (nothing when there is none or it fails)."""
        assert self.shadow is not None
        if time.monotonic() - self._shadow_failed.get(product, -SHADOW_RETRY_S) < SHADOW_RETRY_S:
            return
        try:
            cand = self.shadow.get(product)
        except UnknownProduct:
            return
        except Exception as exc:  # noqa: BLE001 - a broken candidate never costs the line its verdicts
            log.warning("%s: the shadow candidate does not load (%s); scoring without it", product, exc)
            self._shadow_failed[product] = time.monotonic()
            return
        if cand.model_version == pipe.model_version:  # promoted meanwhile: the verdict is already its score
            return
        if cand.config.native or pipe.config.native or cand.config.image_size != pipe.config.image_size:
            if product not in self._shadow_failed:
                log.warning("%s: the candidate sees other inputs than the promoted model: no shadow score", product)
            self._shadow_failed[product] = time.monotonic()
            return
        try:
            scores = cand.score_images(torch.cat([f.pixels for f in frames])).scores
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: the shadow candidate failed to score (%s)", product, exc)
            self._shadow_failed[product] = time.monotonic()
            return
        for row, value in zip(rows, scores, strict=True):
            row["shadow_score"], row["shadow_version"] = float(value), cand.model_version
