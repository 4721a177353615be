"""A multi-node Ray cluster on one machine, for autoscaling tests and benchmarks (not for production).

Ray's ``fake_multinode`` provider launches real raylets as "nodes" on this machine
when the autoscaler asks for them and kills them when it lets them go. It wants
the GCS on port 6379 and every node on one address, so it runs inside a private
network namespace (only ``lo``, brought up: every address is 127.0.0.1, nothing
reaches or collides with the host's ports) and a private PID namespace (every
process started inside is listed in its own ``/proc`` and stopped by PID; the
kernel kills any survivor when the namespace's first process exits).

:func:`namespace_unavailable` says why such namespaces cannot be made (tests skip
with that reason); :func:`run_in_namespace` runs a command inside them;
:class:`FakeCluster` starts and stops the cluster from inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the fake provider hard-codes the GCS port (free inside the private namespace)
GCS_PORT = 6379
#: Ray's fixed head node type name in the fake provider
HEAD_TYPE = "ray.head.default"
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def namespace_unavailable() -> str | None:
    """None when private network + PID namespaces can be made here, else the reason."""
    try:
        done = subprocess.run([*UNSHARE, "--", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=20)
    except FileNotFoundError as exc:
        return f"cannot make a private network namespace: {exc.filename} is not installed"
    except subprocess.TimeoutExpired:
        return "cannot make a private network namespace: unshare timed out"
    if done.returncode != 0:
        why = (done.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"cannot make a private network namespace ({why[-1] if why else done.returncode}): needs root or userns"
    return None


def run_in_namespace(argv: list[str], env: dict[str, str] | None = None, timeout: float | None = None):
    """Run ``argv`` in fresh network + PID namespaces with loopback up; returns the CompletedProcess."""
    script = 'ip link set lo up && exec "$@"'
    return subprocess.run(
        [*UNSHARE, "--", "sh", "-c", script, "sh", *argv], env=env, timeout=timeout, capture_output=True, text=True
    )


def autoscaler_config(node_types: dict[str, dict[str, Any]], idle_timeout_minutes: float) -> dict[str, Any]:
    """A complete autoscaler config for the fake provider (every top-level key an autoscaler YAML needs).

    ``node_types``: name → {"resources": {...}, "min_workers": n, "max_workers": n}.
    """
    types = {HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0}}
    for name, spec in node_types.items():
        types[name] = {"node_config": {}, **spec}
    return {
        "cluster_name": "ear-fake",
        "max_workers": sum(int(t["max_workers"]) for t in node_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        # use_node_id_as_ip: every fake node has address 127.0.0.1, so the autoscaler must key nodes by id
        # (without it, it never sees a node idle and never scales down)
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_launch_config_check": True,
            "disable_node_updaters": True,
        },
        "auth": {},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _processes() -> dict[int, str]:
    """PID → command line of every process this PID namespace shows (its own ``/proc``)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
    return out


@dataclass
class FakeCluster:
    """Head (0 CPUs) + an autoscaler that adds and removes fake worker nodes; call from inside the namespace."""

    node_types: dict[str, dict[str, Any]]
    idle_timeout_minutes: float = 0.1
    object_store_bytes: int = 80 * 1024 * 1024
    #: a lost node is declared dead after ~1.5 s instead of Ray's ~30 s (health checks every 0.5 s)
    system_config: dict[str, Any] = field(
        default_factory=lambda: {
            "health_check_period_ms": 500,
            "health_check_timeout_ms": 500,
            "health_check_failure_threshold": 3,
        }
    )
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ear-ray-", dir="/tmp")))
    started_pids: set[int] = field(default_factory=set)

    def env(self) -> dict[str, str]:
        # HOME and RAY_TMPDIR private: no token or session of another Ray on this machine is picked up
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parents[2])
        return {
            **os.environ,
            "HOME": str(home),
            "RAY_TMPDIR": str(self.workdir),
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # the autoscaler replaces a node it has not heard from in 5 s (Ray's default: 30 s)
            "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "5",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1",
        }

    def start(self) -> None:
        types = {
            name: {**spec, "resources": {**spec["resources"], "object_store_memory": self.object_store_bytes}}
            for name, spec in self.node_types.items()
        }
        cfg = self.workdir / "autoscaler.json"
        cfg.write_text(json.dumps(autoscaler_config(types, self.idle_timeout_minutes)))
        before = set(_processes())
        env = self.env()
        os.environ.update({k: env[k] for k in ("HOME", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")})
        ray_cli = str(Path(sys.executable).with_name("ray"))
        subprocess.run(
            [ray_cli, "start", "--head", f"--port={GCS_PORT}", "--num-cpus=0", "--node-ip-address=127.0.0.1",
             f"--object-store-memory={self.object_store_bytes}", f"--autoscaling-config={cfg}",
             "--include-dashboard=false", "--disable-usage-stats",
             f"--system-config={json.dumps(self.system_config, separators=(',', ':'))}"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.started_pids |= set(_processes()) - before

    @property
    def address(self) -> str:
        return f"127.0.0.1:{GCS_PORT}"

    def worker_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes other than the head."""
        import ray

        return [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]

    def raylet_pid(self, node_id: str) -> int:
        """The PID of the raylet of one node (its command line names the node id)."""
        for pid, cmd in _processes().items():
            if "raylet/raylet" in cmd.split(" ")[0] and f"--node_id={node_id}" in cmd:
                return pid
        raise LookupError(f"no raylet for node {node_id}")

    def stop(self) -> list[int]:
        """SIGTERM, then SIGKILL, every process of this namespace but the caller, by PID; returns the PIDs."""
        me = os.getpid()
        targets = [pid for pid in _processes() if pid not in (me, 1) and pid != os.getppid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + 5
            while time.time() < deadline and any(p in _processes() for p in targets):
                time.sleep(0.1)
        shutil.rmtree(self.workdir, ignore_errors=True)  # sessions and logs of the fake nodes
        for pid in targets:  # reap our own children
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        return targets
