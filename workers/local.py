"""Start or join a Ray cluster: local and loopback-only when no address is given.

A local Ray must be reachable from this machine only. Given ``127.0.0.1`` as its node
address, Ray (2.x on Linux) still swaps it for the machine's outward address and its
GCS, raylet and workers listen on every interface; with cluster mode off
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what Ray itself does on a laptop) the node
address stays loopback and every server binds 127.0.0.1 — checked with ``ss -ltnp``
over the whole process tree in ``tests/workers/test_cluster.py``. Ray's token authentication is
on by default in the pinned version. To reach a cluster from elsewhere, start it
deliberately (``ray start --head --node-ip-address=<ip>``) and pass ``--address``.
"""

from __future__ import annotations

import os

import ray

_CLUSTER_MODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """``address`` = ``auto`` / ``ray://host:10001`` joins a cluster; ``None`` starts a local one on 127.0.0.1."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    # cluster mode off: the node address stays 127.0.0.1 (env for the processes Ray starts, the constant for
    # this one, which read it when ray was imported)
    os.environ[_CLUSTER_MODE_ENV] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local",  # always a new local instance: never join whatever /tmp/ray/ray_current_cluster names
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=env,
        log_to_driver=False,
        configure_logging=False,
    )
