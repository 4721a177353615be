"""A real ``redis-server`` on a free loopback port, for the demo, the tests and the benchmarks.

With no Redis URL configured, ear-stream starts its own server bound to
127.0.0.1 and stops it afterwards (docs/design.md, "Embedded defaults").
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ..errors import SetupError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too: below the ephemeral range, so the bus fits."""
    import random

    for _ in range(1000):
        port = random.randint(20000, 29999)
        if port not in taken and port + 10000 not in taken and _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServerMissing(SetupError):
    """No ``redis-server`` executable to start the embedded server with."""


def find_redis_server() -> str:
    """Path of ``redis-server``; :class:`RedisServerMissing` with the fix when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(
            "redis-server not found on PATH: install it (make redis, or apt-get install redis-server; "
            "Redis >= 6.2) or pass --redis URL of a running server"
        )
    return binary


class RedisServer:
    """Start/stop/restart one redis-server process; ``appendonly`` makes acknowledged XADDs survive restarts."""

    def __init__(self, port: int | None = None, appendonly: bool = False, data_dir: str | Path | None = None) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.appendonly = appendonly
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="ear-redis-")
        self.data_dir = Path(data_dir or self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = self._args()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self._wait_ready(timeout)

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        return args + self.extra_args

    def _wait_ready(self, timeout: float) -> RedisServer:
        assert self.proc is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode}")
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisClusterServer:
    """A real Redis Cluster on loopback: ``primaries`` redis-server nodes in cluster mode, each with
    ``replicas`` replicas, joined by ``redis-cli --cluster create`` (for the tests and the benchmarks).

    ``node_timeout_ms`` is how long a primary may be silent before its replica takes over: short here, so a
    failover test is seconds. Nodes append to a file with fsync always, like the single server's tests.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.cli = shutil.which("redis-cli")
        if self.cli is None:
            raise RedisServerMissing("redis-cli not found on PATH: install redis-tools (make redis)")
        self.primaries, self.replicas, self.node_timeout_ms = primaries, replicas, node_timeout_ms
        self._tmp = tempfile.TemporaryDirectory(prefix="ear-redis-cluster-")
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        for i in range(primaries * (1 + replicas)):
            port = free_cluster_port(taken)
            taken |= {port, port + 10000}
            node = RedisServer(port, appendonly=True, data_dir=Path(self._tmp.name) / f"node-{i}")
            node.extra_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
            ]  # fmt: skip
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """Any node's URL: the cluster client reads the slot map from it."""
        return self.nodes[0].url

    def start(self, timeout: float = 60.0) -> RedisClusterServer:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
        )  # fmt: skip
        self.wait_healthy(timeout)
        self._wait_replicas_linked(timeout)
        return self

    def _wait_replicas_linked(self, timeout: float) -> None:
        """Until every replica's link to its primary is up (a WAIT before that counts no replica)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [redis.Redis(host="127.0.0.1", port=n.port).info("replication") for n in self.nodes]
            replicas = [i for i in infos if i.get("role") == "slave"]
            if len(replicas) == self.primaries * self.replicas and all(
                i.get("master_link_status") == "up" for i in replicas
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster's replicas did not link within {timeout}s")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every live node says ``cluster_state:ok`` and every slot has a primary (after a start or a
        failover)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                try:
                    info = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1).cluster("info")
                    states.append(info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384)
                except redis.RedisError:
                    states.append(False)
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster did not become healthy within {timeout}s")

    def primary_of(self, key: str) -> RedisServer:
        """The node that holds ``key``'s slot now."""
        client = redis.Redis(host="127.0.0.1", port=self._live().port)
        slot = int(client.cluster("keyslot", key))
        for start, end, primary, *_ in client.cluster("slots"):
            if start <= slot <= end:
                port = int(primary[1])
                return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node holds slot {slot}")

    def _live(self) -> RedisServer:
        return next(node for node in self.nodes if node.proc is not None and node.proc.poll() is None)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self._tmp.cleanup()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
