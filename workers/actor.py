"""The Ray inspection actor: the same worker loop as ``ear-stream worker``, one per GPU.

Ray sets ``CUDA_VISIBLE_DEVICES`` for an actor created with ``num_gpus=1``, so
the worker's ``device="auto"`` lands on its own GPU. Actors restart without limit
(``max_restarts=-1``) and ``run`` is retried after a restart, so a crashed actor
comes back and its unacknowledged entries are re-read under the same consumer name.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from ear_stream.stream.settings import WorkerConfig
from ear_stream.stream.shards import make_worker


class InspectionActor:
    """Runs one :class:`~ear_stream.stream.worker.Worker` (one per shard it reads, ``stream.shards``); ``stop``
    drains it (finish, flush, ack, return)."""

    def __init__(self, config: dict[str, Any], torch_threads: int = 1) -> None:
        import torch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(max(1, torch_threads))
        self.cfg = WorkerConfig.from_dict(config)
        self.worker = make_worker(self.cfg)  # models load lazily, once per actor, on first use; a loop per shard

    def run(self) -> dict[str, Any]:
        return self.worker.run()

    def stop(self) -> None:
        self.worker.stop()

    def stats(self) -> dict[str, Any]:
        return {"name": self.cfg.name, **self.worker.stats}

    def ping(self) -> str:
        return self.cfg.name

    def node_id(self) -> str:
        """The Ray node this actor runs on (where the autoscaler put it)."""
        return ray.get_runtime_context().get_node_id()


def actor_class(use_gpu: bool, cpus_per_actor: float = 1.0):
    """The Ray remote class: ``num_gpus=1`` per actor on GPU clusters, CPU actors otherwise."""
    options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1, "max_concurrency": 4}
    if use_gpu:
        options.update(num_gpus=1, num_cpus=1)
    else:
        options.update(num_cpus=cpus_per_actor)
    return ray.remote(**options)(InspectionActor)
