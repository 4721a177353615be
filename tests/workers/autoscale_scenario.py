"""End-to-end autoscaling on the fake multi-node cluster: a burst arrives, nodes join, actors drain it, nodes leave.

Run inside private namespaces (see ``fake_cluster.py`` beside it)::

    run_in_namespace([sys.executable, "tests/workers/autoscale_scenario.py", "--models", M, "--images", D,
                      "--out", RESULTS, "--json", OUT])

It starts a redis-server and the fake cluster (head: 0 CPUs; node type ``gpu_worker``
as in ``workers/cluster.yaml``, with 1 CPU and a ``GPU`` resource count standing in
for the device), pushes ``--n`` images, and drives the real :class:`Supervisor`
with a short cool-down, sampling backlog, nodes and actors every poll. With
``--kill-node`` it SIGKILLs the raylet of the first worker node whose actor holds
unacknowledged entries. Everything it started is stopped by PID before it returns;
the JSON it writes is what the test and ``benchmarks/autoscale.py`` read.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

NODE_TYPE = "gpu_worker"


def node_type_spec(max_nodes: int) -> dict[str, dict[str, Any]]:
    """The production node type (``workers/cluster.yaml``: name, 1 GPU, 0..N nodes) at 1 CPU per fake node."""
    return {NODE_TYPE: {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": max_nodes}}


SPARE_HELP = "node-type headroom above --max-nodes (a lost node's replacement can start before it is reaped)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ear_stream_workers.policy import ScalingPolicy
    from ear_stream_workers.supervisor import Supervisor
    from fake_cluster import FakeCluster, autoscaler_config

    from ear_stream.io.results import read_results
    from ear_stream.stream import queue as q
    from ear_stream.stream.redis_server import RedisServer
    from ear_stream.stream.worker import WorkerConfig

    payloads = [p.read_bytes() for p in sorted(Path(args.images).rglob("*.png"))]
    node_types = node_type_spec(args.max_nodes + args.spare_nodes)
    cluster = FakeCluster(node_types, idle_timeout_minutes=args.idle_minutes)
    redis = RedisServer()
    out: dict[str, Any] = {"timeline": [], "placements": {}, "kills": [], "events": {}}
    t0 = time.monotonic()

    def now() -> float:
        return round(time.monotonic() - t0, 2)

    try:
        redis.start()
        cluster.start()
        out["events"]["cluster_up"] = now()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        head = out["head"] = ray.get_runtime_context().get_node_id()
        scfg = q.StreamConfig(claim_idle_ms=args.claim_idle_ms)
        client = q.connect(redis.url)
        q.ensure_group(client, scfg)
        template = WorkerConfig(
            redis_url=redis.url,
            models_dir=Path(args.models),
            out_dir=Path(args.out),
            stream=scfg,
            device="cpu",
            batch_size=args.batch_size,
            flush_rows=10_000,
            flush_seconds=args.flush_seconds,
            block_ms=200,
            claim_every_s=1.0,
        )
        config_path = cluster.workdir / "node_types.yaml"
        config_path.write_text(json.dumps(autoscaler_config(node_types, args.idle_minutes)))
        policy = ScalingPolicy(
            min_workers=0,
            max_workers=args.max_nodes,
            high_watermark=args.high_watermark,
            scale_down_cooldown_s=args.cooldown,
            scale_up_cooldown_s=0.0,
        )
        sup = Supervisor(template, policy, poll_s=args.poll, autoscaling_config=config_path, drain_timeout_s=60)
        out["use_gpu"] = sup.use_gpu
        ids = [f"burst-{i:05d}" for i in range(args.n)]
        for i, ident in enumerate(ids):
            q.push(client, "synthetic", payloads[i % len(payloads)], ident, {"i": i}, scfg)
        out["events"]["pushed"] = now()
        seen_nodes = False
        asking: dict[str, Any] = {}  # actor name → its outstanding node_id() call
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            desired = sup.step()
            lag, pending = q.backlog(client, scfg)
            nodes = cluster.worker_nodes()
            _track_placements(sup, asking, out, now)
            alive = {n["NodeID"] for n in nodes} | {head}
            placed = [s.name for s in sup.slots.values() if out["placements"].get(s.name) in alive]
            out["timeline"].append(
                {"t": now(), "backlog": lag + pending, "nodes": len(nodes), "actors": len(placed),
                 "slots": len(sup.slots), "desired": desired}
            )  # fmt: skip
            if len(nodes) > 0 and "first_node" not in out["events"]:
                out["events"]["first_node"] = now()
            on_new = any(n != head for n in out["placements"].values())
            if on_new and "first_actor_on_new_node" not in out["events"]:
                out["events"]["first_actor_on_new_node"] = now()
            if args.kill_node and not out["kills"]:
                _maybe_kill(cluster, client, scfg, sup, out, now)
            seen_nodes = seen_nodes or len(nodes) > 0
            drained = lag + pending == 0
            if drained and "drained" not in out["events"]:
                out["events"]["drained"] = now()
            if drained and seen_nodes and not sup.slots and not nodes:
                out["events"]["back_to_min"] = now()
                break
            time.sleep(args.poll)
        out["drains"] = sup.drains
        out["final_backlog"] = list(q.backlog(client, scfg))
        out["stream_length"] = int(client.xlen(scfg.stream))
        table = read_results(args.out)
        got = table["id"].to_pylist()
        out["missing"] = sorted(set(ids) - set(got))
        out["rows"] = len(got)
        out["n"] = args.n
        sup.shutdown()
    finally:
        try:
            ray.shutdown()
        finally:
            out["stopped_pids"] = cluster.stop()
            redis.stop()
    return out


def _track_placements(sup, asking: dict, out: dict, now) -> None:  # type: ignore[no-untyped-def]
    """Where each actor runs now: one outstanding ``node_id()`` call per actor, read when it answers.

    ``placements`` holds the latest node; ``history`` every (time, node) change, so a restart elsewhere shows.
    """
    import ray

    for slot in sup.slots.values():
        asking.setdefault(slot.name, slot.handle.node_id.remote())
    if not asking:
        return
    ready, _ = ray.wait(list(asking.values()), num_returns=len(asking), timeout=0.3)
    for name, ref in list(asking.items()):
        if ref in ready:
            del asking[name]
            try:
                node = ray.get(ref)
            except Exception:  # noqa: BLE001 - the actor died with its node; it answers again once restarted
                continue
            if out["placements"].get(name) != node:
                out["placements"][name] = node
                out.setdefault("history", []).append({"t": now(), "actor": name, "node": node})


def _maybe_kill(cluster, client, scfg, sup, out, now) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the raylet of a worker node whose actor holds unacknowledged entries (mid-batch)."""
    from ear_stream.stream import queue as q

    for slot in sup.slots.values():
        node = out["placements"].get(slot.name)
        if node is None or node == out["head"]:
            continue
        held = q.consumer_pending(client, scfg, slot.name)
        if held > 0:
            pid = cluster.raylet_pid(node)
            os.kill(pid, signal.SIGKILL)
            out["kills"].append({"t": now(), "actor": slot.name, "node": node, "raylet_pid": pid, "held": held})
            return


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="MODELS_DIR with a 'synthetic' product")
    p.add_argument("--images", required=True, help="folder of PNG payloads to push")
    p.add_argument("--out", required=True, help="Parquet results root")
    p.add_argument("--json", required=True, help="where to write the timeline and checks")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--max-nodes", type=int, default=2)
    p.add_argument("--spare-nodes", type=int, default=0, help=SPARE_HELP)
    p.add_argument("--high-watermark", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--flush-seconds", type=float, default=1.0)
    p.add_argument("--cooldown", type=float, default=3.0)
    p.add_argument("--idle-minutes", type=float, default=0.1)
    p.add_argument("--claim-idle-ms", type=int, default=3000)
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--kill-node", action="store_true")
    args = p.parse_args()
    result = run(args)
    Path(args.json).write_text(json.dumps(result, indent=1))
    sys.exit(0)


if __name__ == "__main__":
    main()
