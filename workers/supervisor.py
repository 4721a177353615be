"""Supervisor of the inspection actors: scales them with the stream's backlog and asks Ray for nodes.

It runs in the driver (``ear-stream cluster``). Every ``poll_s`` it reads the
group's lag and pending count from Redis, asks :class:`ear_stream_workers.policy.ScalingPolicy`
how many actors that calls for, tells the Ray autoscaler (``request_resources``)
so GPU nodes are added or released, starts actors, and drains surplus ones
(stop → finish, flush, ack → kill). Actor names are stable slots
(``<prefix>-0``, ``<prefix>-1``…) so a slot that comes back re-reads its own
unacknowledged entries; with ``metrics_port`` set, slot ``i`` serves its Prometheus metrics on
``metrics_port + i`` on its node. Its Redis calls go through the worker's policy
(:class:`~ear_stream.stream.redis_calls.RedisCalls`): a Redis restart is waited out, not a crash of
the driver; once stopping, an unreachable Redis gets a few tries and the actors are drained regardless.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import redis

from ear_stream.stream import queue as q
from ear_stream.stream.redis_calls import RedisCalls
from ear_stream.stream.settings import WorkerConfig

from .actor import actor_class
from .policy import DEFAULT_POLL_S, ScalingPolicy, resource_bundles

log = logging.getLogger("ear_stream_workers.supervisor")


def default_request_resources(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


#: where ``ray up`` leaves the cluster's autoscaler config on the head node
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def node_types_with_gpus(config: dict[str, Any]) -> list[str]:
    """Node types of an autoscaler config that offer GPUs and may be started (max_workers > 0)."""
    return [
        name
        for name, spec in (config.get("available_node_types") or {}).items()
        if float((spec.get("resources") or {}).get("GPU", 0)) > 0 and int(spec.get("max_workers", 0)) > 0
    ]


def gpu_offer(autoscaling_config: str | Path | None = None) -> tuple[bool, str]:
    """Whether inspection actors should ask for GPUs, and from what that was decided.

    A GPU cluster scaled to zero workers has no GPU *now*; what counts is what the
    autoscaler may add. First source found: the autoscaler config (the given path,
    else ``~/ray_bootstrap_config.yaml`` that ``ray up`` leaves on the head), the
    cluster config the autoscaler reports to the GCS (KubeRay, autoscaler v2), and
    last the resources of the nodes up now.
    """
    import yaml

    path = Path(autoscaling_config).expanduser() if autoscaling_config else BOOTSTRAP_CONFIG.expanduser()
    if path.is_file():
        gpu_types = node_types_with_gpus(yaml.safe_load(path.read_text()) or {})
        return bool(gpu_types), f"node types in {path}: {', '.join(gpu_types) or 'none with GPUs'}"
    if autoscaling_config:
        raise FileNotFoundError(f"autoscaling config {path} does not exist")
    try:
        reported = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - not every Ray version/cluster reports one
        reported = None
    if reported:
        return float(
            reported.get("GPU", 0)
        ) > 0, f"cluster config reported to the GCS (max GPUs {reported.get('GPU', 0)})"
    gpus = ray.cluster_resources().get("GPU", 0)
    return gpus > 0, f"resources of the nodes up now ({gpus:g} GPUs)"


def actor_config(template: WorkerConfig, index: int, name_prefix: str = "ear-actor") -> WorkerConfig:
    """The settings of slot ``index``'s actor: the template's, with the two that belong to one process set here.

    Its name is the slot's (``<prefix>-<index>``: a slot that comes back re-reads its own pending entries);
    the supervisor decides when it leaves (no idle timeout); with a metrics port P it serves on P + index, so
    actors sharing a node never share a port.
    """
    port = template.metrics_port
    return dataclasses.replace(
        template, name=f"{name_prefix}-{index}", metrics_port=port + index if port else None, exit_when_idle_s=None
    )


@dataclass
class Slot:
    name: str
    handle: Any
    run_ref: Any


@dataclass
class Supervisor:
    template: WorkerConfig
    policy: ScalingPolicy
    use_gpu: bool | None = None
    #: autoscaler config to read the node types from (see :func:`gpu_offer`)
    autoscaling_config: Path | None = None
    name_prefix: str = "ear-actor"
    poll_s: float = DEFAULT_POLL_S
    drain_timeout_s: float = 120.0
    request_resources: Callable[[list[dict[str, float]]], None] = default_request_resources
    clock: Callable[[], float] = time.monotonic
    slots: dict[int, Slot] = field(default_factory=dict)
    #: one record per drained actor: did its loop return, and what it left unacknowledged (must be 0)
    drains: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.use_gpu is None:
            self.use_gpu, why = gpu_offer(self.autoscaling_config)
            log.info("actors ask for %s (%s)", "GPUs" if self.use_gpu else "CPUs", why)
        self._actor_cls = actor_class(self.use_gpu)
        self._client = q.connect(self.template.redis_url)
        self._stopping = False
        self._redis = RedisCalls(self._client, self.template.stream, stopping=lambda: self._stopping)
        self._redis(lambda: q.ensure_group(self._client, self.template.stream), "group creation")
        self._last_request: int | None = None

    def stop(self) -> None:
        """Leave :meth:`run` at its next step (from a signal handler); Redis calls then give up sooner."""
        self._stopping = True

    # ------------------------------------------------------------------ one control step
    def backlog(self) -> tuple[int, int]:
        """(lag, pending) of the workers' group."""
        return self._redis(lambda: q.backlog(self._client, self.template.stream), "backlog")

    def step(self) -> int:
        lag, pending = self.backlog()
        desired = self.policy.desired(len(self.slots), lag, pending, self.clock())
        if desired != self._last_request:
            self.request_resources(resource_bundles(desired, bool(self.use_gpu)))
            self._last_request = desired
        while len(self.slots) < desired:
            self._start(min(set(range(self.policy.max_workers)) - set(self.slots)))
        while len(self.slots) > desired:
            self._drain(max(self.slots))
        self._revive_finished()
        return desired

    def _start(self, index: int) -> None:
        cfg = actor_config(self.template, index, self.name_prefix)
        name = cfg.name
        handle = self._actor_cls.remote(cfg.to_dict())
        self.slots[index] = Slot(name, handle, handle.run.remote())
        log.info("started %s (%s)", name, "GPU" if self.use_gpu else "CPU")

    def _drain(self, index: int) -> None:
        slot = self.slots.pop(index)
        returned = False
        try:
            slot.handle.stop.remote()
            ray.get(slot.run_ref, timeout=self.drain_timeout_s)
            returned = True
        except Exception as exc:  # noqa: BLE001 - a dead actor has nothing left to drain
            log.warning("draining %s: %s", slot.name, exc)
        # the consumer of each shard the actor read (one stream: the actor's own name)
        consumers = [
            (lane, slot.name if lane.shard is None else f"{slot.name}-s{lane.shard}")
            for lane in self.template.stream.lanes(self.template.own_shards)
        ]
        left: int | None = None
        try:
            left = sum(
                self._redis(lambda lane=lane, c=c: q.consumer_pending(self._client, lane, c), "pending count")
                for lane, c in consumers
            )
        except redis.RedisError as exc:  # only when stopping with Redis gone: its entries stay pending anyway
            log.warning("pending entries of %s unknown (%s)", slot.name, exc)
        self.drains.append({"name": slot.name, "returned": returned, "pending_at_kill": left})
        ray.kill(slot.handle, no_restart=True)
        try:  # `status` drops it now, not when stale
            for lane, c in consumers:
                self._redis(lambda lane=lane, c=c: q.mark_stopped(self._client, lane, c), "clean-exit marker")
        except redis.RedisError as exc:
            log.warning("%s not marked stopped (%s): status lists it until its heartbeat expires", slot.name, exc)
        log.info("stopped %s", slot.name)

    def _revive_finished(self) -> None:
        """A run that ended without being asked (its retries exhausted) is started again."""
        refs = {slot.run_ref: i for i, slot in self.slots.items()}
        if not refs:
            return
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in done:
            index = refs[ref]
            try:
                ray.get(ref)
                log.warning("%s returned unexpectedly; restarting its loop", self.slots[index].name)
            except Exception as exc:  # noqa: BLE001
                log.error("%s failed (%s); restarting its loop", self.slots[index].name, exc)
            self.slots[index].run_ref = self.slots[index].handle.run.remote()

    # ------------------------------------------------------------------ loops
    def run(self, until: Callable[[], bool] | None = None, max_seconds: float | None = None) -> None:
        started = self.clock()
        while not self._stopping:
            self.step()
            if until is not None and until():
                return
            if max_seconds is not None and self.clock() - started >= max_seconds:
                return
            time.sleep(self.poll_s)

    def drained(self) -> bool:
        return self.backlog() == (0, 0)

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([slot.handle.stats.remote() for slot in self.slots.values()], timeout=60)

    def shutdown(self) -> None:
        self._stopping = True
        for index in sorted(self.slots, reverse=True):
            self._drain(index)
        self.request_resources([])
