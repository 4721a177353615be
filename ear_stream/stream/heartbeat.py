"""What a worker tells the world every ``heartbeat_every_s``: its heartbeat hash and its Prometheus gauges.

The hash (``<stream>:<group>:workers:<name>``, :func:`~.consumer.heartbeat`) carries the worker's counts,
its products, the models that did not reload and the drift per product: what ``ear-stream status`` shows.
The gauges add what the worker reads from Redis (lag, pending, memory, stream lengths). Drift is reported
here, once per heartbeat rather than per batch: the quantile and ratio gauges, and the alert's log line
once per product each time it starts. A heartbeat that fails is skipped, never retried: it must not hold
up the loop, and the next one comes ``heartbeat_every_s`` later.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis

from . import queue as q
from .drift import DriftMonitor, describe_drift
from .metrics import WorkerMetrics
from .models import ModelRegistry

log = logging.getLogger("ear_stream.stream.worker.heartbeat")  # a child of the worker's logger, as before the split


class Heartbeat:
    """A worker's heartbeat and gauges; ``stats`` is the worker's counts, read at each beat."""

    def __init__(
        self,
        client: redis.Redis,
        scfg: q.StreamConfig,
        worker: str,
        every_s: float,
        models: ModelRegistry,
        drift: DriftMonitor,
        stats: dict[str, Any],
        metrics: WorkerMetrics,
    ) -> None:
        self.client, self.scfg, self.worker, self.every_s = client, scfg, worker, every_s
        self.models, self.drift, self.stats, self.metrics = models, drift, stats, metrics
        self._alerting: set[str] = set()  # products whose drift alert was logged and has not cleared since
        self._last = 0.0

    def maybe_beat(self, force: bool = False) -> None:
        """Beat when ``every_s`` has passed since the last one (or now, with ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        try:
            q.heartbeat(
                self.client,
                self.scfg,
                self.worker,
                {
                    **self.stats,
                    "pid": os.getpid(),
                    "products": ",".join(self.models.known()),
                    "model_errors": json.dumps(self.models.errors()),
                    "drift": json.dumps(self.drift_reports()),
                },
            )
            self._gauges()
        except redis.RedisError as exc:  # the heartbeat never stops the worker
            log.debug("heartbeat failed: %s", exc)

    def _gauges(self) -> None:
        self.metrics.model_reload_errors.set(len(self.models.errors()))
        lag, pending = q.backlog(self.client, self.scfg)
        self.metrics.lag.set(lag)
        self.metrics.pending.set(pending)
        mem = q.redis_memory(self.client)
        self.metrics.used_memory.set(mem["used_memory"])
        self.metrics.maxmemory.set(mem["maxmemory"])
        self.metrics.eviction_safe.set(1 if mem["maxmemory_policy"] == "noeviction" else 0)
        for name, length in q.stream_lengths(self.client, self.scfg).items():
            self.metrics.stream_length.labels(self.worker, name).set(length)

    def drift_reports(self) -> dict[str, dict[str, Any]]:
        """Drift per product: gauges, the alert log line, the heartbeat field."""
        reports = {}
        for product in self.drift.products():
            rep = reports[product] = self.drift.report(product)
            for q_name in ("p50", "p95"):
                if q_name in rep:
                    self.metrics.score_quantile.labels(self.worker, product, q_name[1:]).set(rep[q_name])
            if "ratio" in rep:
                self.metrics.drift_ratio.labels(self.worker, product).set(rep["ratio"])
            if "shift" in rep:
                self.metrics.drift_shift.labels(self.worker, product).set(rep["shift"])
            if "alert" not in rep:
                continue
            self.metrics.drift_alert.labels(self.worker, product).set(1 if rep["alert"] else 0)
            if rep["alert"] and product not in self._alerting:
                log.warning("%s: drift alert: %s", product, describe_drift(rep))
                self._alerting.add(product)
            elif not rep["alert"]:
                self._alerting.discard(product)
        return reports
