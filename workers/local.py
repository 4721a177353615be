"""Start or join a Ray cluster: local and loopback-only when no address is given."""

from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """``address`` = ``auto`` / ``ray://host:10001`` joins a cluster; ``None`` starts a local one on 127.0.0.1."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    ray.init(
        address="local",  # always a new local instance: never join whatever /tmp/ray/ray_current_cluster names
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=env,
        log_to_driver=False,
        configure_logging=False,
    )
