"""Sharded streams (docs/design.md, "Shards"): a producer that spreads entries, a worker that reads its shards.

One stream key lives on one Redis Cluster slot, so one primary: the queue's ceiling. With ``shards=N`` the
input is N streams ``<stream>:{k}`` (and N dead-letter streams ``<dlq>:{k}``, each beside its shard under
the same hash tag, so a dead letter and its ack stay one transaction on one primary). Every shard is a
whole stream of today's protocol: its consumer group, claims, dead letters, backpressure and heartbeats
are its own. Here is only what spans them:

* :class:`ShardedProducer` picks a shard per entry, round-robin or by product (all of a product's
  entries in one shard, in order), with one :class:`~.producer.Producer` — one backpressure — per shard;
* :class:`ShardedWorker` runs one :class:`~.worker.Worker` loop per shard it owns (all, or
  ``own_shards``), in threads of one process sharing the models and the metrics; a shard's loop reads,
  claims and acknowledges only that shard, under the consumer name ``<name>-s<k>``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import signal
import threading
import zlib
from typing import Any

import redis

from . import queue as q
from .metrics import WorkerMetrics
from .models import ModelRegistry, check_models_dir
from .settings import SPREAD_CHOICES, WorkerConfig
from .worker import Worker

log = logging.getLogger("ear_stream.stream.shards")


def shard_of_product(product: str, shards: int) -> int:
    """The shard of a product under ``spread="product"``: stable across processes and restarts (CRC-32)."""
    return zlib.crc32(product.encode()) % shards


class ShardedProducer:
    """:class:`~.producer.Producer`'s interface over N shards; backpressure is per shard (``max_backlog`` each)."""

    def __init__(self, client: redis.Redis, cfg: q.StreamConfig, spread: str = "round-robin", **options: Any) -> None:
        if spread not in SPREAD_CHOICES:
            raise ValueError(f"spread must be one of {SPREAD_CHOICES}, got {spread!r}")
        self.cfg, self.spread = cfg, spread
        self.lanes = [q.Producer(client, lane, **options) for lane in cfg.lanes()]
        self._turn = itertools.count()

    def push(self, product: str, image: bytes, ident: str, meta: dict[str, Any] | str | None = None) -> str:
        return self.lanes[self.shard_for(product)].push(product, image, ident, meta)

    def shard_for(self, product: str) -> int:
        if self.spread == "product":
            return shard_of_product(product, len(self.lanes))
        return next(self._turn) % len(self.lanes)

    @property
    def waited_s(self) -> float:
        return sum(lane.waited_s for lane in self.lanes)


def make_producer(client: redis.Redis, cfg: q.StreamConfig, spread: str = "round-robin", **options: Any) -> Any:
    """A :class:`~.producer.Producer` for one stream, a :class:`ShardedProducer` for ``cfg.shards > 1``."""
    if cfg.shards == 1:
        return q.Producer(client, cfg, **options)
    return ShardedProducer(client, cfg, spread, **options)


class ShardedWorker:
    """:class:`~.worker.Worker`'s interface over the shards it owns: one loop per shard, one process."""

    def __init__(self, cfg: WorkerConfig, registry: ModelRegistry | None = None) -> None:
        if registry is None:
            check_models_dir(cfg.models_dir)
        self.cfg = cfg
        registry = registry or ModelRegistry.for_worker(cfg)
        metrics = WorkerMetrics(cfg.name)
        spill = cfg.dlq_spill_dir or q.default_spill_dir(cfg.out_dir)
        self.lanes: list[Worker] = []
        for i, lane in enumerate(cfg.stream.lanes(cfg.own_shards)):
            lane_cfg = dataclasses.replace(
                cfg,
                stream=lane,
                name=f"{cfg.name}-s{lane.shard}",
                metrics_port=cfg.metrics_port if i == 0 else None,  # one endpoint: the metrics are shared
                dlq_spill_dir=spill / f"shard-{lane.shard}",
            )
            self.lanes.append(Worker(lane_cfg, registry, metrics))
        self._errors: list[BaseException] = []

    @property
    def stats(self) -> dict[str, Any]:
        """The shards' counters summed (timings: the slowest shard's)."""
        total: dict[str, Any] = {}
        for lane in self.lanes:
            for key, value in dict(lane.stats).items():
                if isinstance(value, int | float):
                    total[key] = max(total.get(key, 0), value) if key.endswith("_s") else total.get(key, 0) + value
        return total

    def stop(self) -> None:
        for lane in self.lanes:
            lane.stop()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())

    def mark_stopped(self) -> None:
        for lane in self.lanes:
            lane.mark_stopped()

    def run(self) -> dict[str, Any]:
        """Run every shard's loop until all have left; a loop that fails stops the others, then raises."""
        threads = [
            threading.Thread(target=self._run_lane, args=(lane,), name=f"ear-shard-{lane.scfg.shard}")
            for lane in self.lanes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._errors:
            raise self._errors[0]
        return self.stats

    def _run_lane(self, lane: Worker) -> None:
        try:
            lane.run()
        except BaseException as exc:
            log.exception("shard %s stopped with an error; stopping the others", lane.scfg.shard)
            self._errors.append(exc)
            self.stop()


def make_worker(cfg: WorkerConfig, registry: ModelRegistry | None = None) -> Worker | ShardedWorker:
    """A :class:`~.worker.Worker` for one stream, a :class:`ShardedWorker` for ``cfg.stream.shards > 1``."""
    if cfg.stream.shards == 1:
        return Worker(cfg, registry)
    return ShardedWorker(cfg, registry)
