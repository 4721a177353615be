"""Prometheus metrics of a worker: throughput, batch latency, lag, dead letters, kept images."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class WorkerMetrics:
    """One registry per worker so that several workers can live in one process (tests, Ray)."""

    def __init__(self, worker: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"labelnames": ["worker"], "registry": self.registry}
        self.images = Counter("ear_images_scored", "Images scored and durably written", **labels).labels(worker)
        self._dead_letters = Counter(
            "ear_dead_letters",
            "Entries sent to the dead-letter stream, by reason",
            labelnames=["worker", "reason"],
            registry=self.registry,
        )
        self.worker = worker
        self.up = Gauge("ear_worker_up", "1 while the worker runs (count them for the worker count)", **labels).labels(
            worker
        )
        self.up.set(1)
        self.latency = Histogram(
            "ear_verdict_latency_seconds",
            "Time from XADD (the stream id) to the verdict being scored",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            **labels,
        ).labels(worker)
        self.maxmemory = Gauge("ear_redis_maxmemory_bytes", "Redis maxmemory (0 = no limit)", **labels).labels(worker)
        self.eviction_safe = Gauge(
            "ear_redis_noeviction",
            "1 when Redis' maxmemory-policy is noeviction (nothing accepted can be evicted)",
            **labels,
        ).labels(worker)
        self.batch_seconds = Histogram("ear_batch_seconds", "Wall time of one scored batch", **labels).labels(worker)
        self.lag = Gauge("ear_stream_lag", "Entries not yet delivered to the group", **labels).labels(worker)
        self.pending = Gauge("ear_stream_pending", "Entries delivered but not acknowledged", **labels).labels(worker)
        self.reconnects = Counter("ear_redis_reconnects", "Reconnections to Redis", **labels).labels(worker)
        self.used_memory = Gauge("ear_redis_used_memory_bytes", "Redis used_memory (INFO memory)", **labels).labels(
            worker
        )
        self.redis_oom = Gauge(
            "ear_redis_oom", "1 while Redis refuses writes (maxmemory reached, noeviction), else 0", **labels
        ).labels(worker)
        self.warmup_seconds = Gauge(
            "ear_worker_warmup_seconds", "Model load and warm-up before the first read", **labels
        ).labels(worker)
        self.results_write_failing = Gauge(
            "ear_results_write_failing",
            "1 while results cannot be written (full disk, store down): entries wait pending, nothing is read",
            **labels,
        ).labels(worker)
        self.model_reload_errors = Gauge(
            "ear_model_reload_errors",
            "Products whose latest model files did not load (the previous model keeps scoring)",
            **labels,
        ).labels(worker)
        self.images_kept = Counter(
            "ear_images_kept", "Original images kept (--keep-images) whose rows name them", **labels
        ).labels(worker)
        self.image_keep_failures = Counter(
            "ear_image_keep_failures",
            "Rows written without their image (image_uri null): the image store failed, was slow or was skipped",
            **labels,
        ).labels(worker)
        self.image_keep_failing = Gauge(
            "ear_image_keep_failing", "1 while the image store fails (rows go on without image_uri), else 0", **labels
        ).labels(worker)
        self.payload_fetch_failing = Gauge(
            "ear_payload_fetch_failing",
            "1 while the payload store of claim-check entries cannot be reached (they wait, pending), else 0",
            **labels,
        ).labels(worker)
        self.kept_image_bytes = Gauge(
            "ear_kept_image_bytes", "Bytes in the image store (--keep-images), as of its last retention pass", **labels
        ).labels(worker)
        self.kept_image_objects = Gauge(
            "ear_kept_image_objects", "Images in the image store, as of its last retention pass", **labels
        ).labels(worker)
        self.stream_length = Gauge(
            "ear_stream_length", "XLEN of a stream", labelnames=["worker", "stream"], registry=self.registry
        )
        self.score_quantile = Gauge(
            "ear_score_quantile",
            "Quantile of the live good-side scores (rolling window) per product",
            labelnames=["worker", "product", "q"],
            registry=self.registry,
        )
        self.drift_ratio = Gauge(
            "ear_drift_ratio",
            "max(live p50 / calibration p50, live p95 / calibration p95) of good-side scores; 1 = no drift",
            labelnames=["worker", "product"],
            registry=self.registry,
        )
        self.drift_shift = Gauge(
            "ear_drift_shift",
            "Largest distance of the live median of an image statistic from the held-out good images', in spreads",
            labelnames=["worker", "product"],
            registry=self.registry,
        )
        self.drift_alert = Gauge(
            "ear_drift_alert",
            "1 while the drift alert holds: inputs shifted past --drift-shift, or scores rose past --drift-alert "
            "(significantly)",
            labelnames=["worker", "product"],
            registry=self.registry,
        )

    def dead_letters(self, reason: str, n: int = 1) -> None:
        self._dead_letters.labels(self.worker, reason).inc(n)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
