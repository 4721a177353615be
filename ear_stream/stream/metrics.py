"""Prometheus metrics of a worker: throughput, batch latency, lag, dead letters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class WorkerMetrics:
    """One registry per worker so that several workers can live in one process (tests, Ray)."""

    def __init__(self, worker: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"labelnames": ["worker"], "registry": self.registry}
        self.images = Counter("ear_images_scored", "Images scored and durably written", **labels).labels(worker)
        self.dead_letters = Counter("ear_dead_letters", "Entries sent to the dead-letter stream", **labels).labels(
            worker
        )
        self.batch_seconds = Histogram("ear_batch_seconds", "Wall time of one scored batch", **labels).labels(worker)
        self.lag = Gauge("ear_stream_lag", "Entries not yet delivered to the group", **labels).labels(worker)
        self.pending = Gauge("ear_stream_pending", "Entries delivered but not acknowledged", **labels).labels(worker)
        self.reconnects = Counter("ear_redis_reconnects", "Reconnections to Redis", **labels).labels(worker)
        self.used_memory = Gauge("ear_redis_used_memory_bytes", "Redis used_memory (INFO memory)", **labels).labels(
            worker
        )
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

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
