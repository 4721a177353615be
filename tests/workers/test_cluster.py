"""Ray deployment: the scaling policy (pure) and actors on a real local Ray with a real Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ear_stream_workers.policy import ScalingPolicy, resource_bundles


def test_policy_scales_up_to_max_with_rising_lag():
    p = ScalingPolicy(min_workers=1, max_workers=4, high_watermark=100, scale_up_cooldown_s=0)
    n, t = 1, 0.0
    for lag in (50, 300, 900, 5000, 10000):
        n = p.desired(n, lag, 0, t)
        t += 1
    assert n == 4
    assert p.desired(4, 10**6, 0, t) == 4  # never above max


def test_policy_scales_down_to_min_only_after_cooldown():
    p = ScalingPolicy(min_workers=1, max_workers=4, high_watermark=100, scale_down_cooldown_s=30)
    assert p.desired(4, 0, 0, now=0) == 4
    assert p.desired(4, 0, 0, now=29) == 4
    assert p.desired(4, 0, 0, now=30) == 1


def test_policy_does_not_oscillate_on_flapping_lag():
    p = ScalingPolicy(min_workers=1, max_workers=4, high_watermark=100, scale_down_cooldown_s=10, scale_up_cooldown_s=0)
    n = p.desired(1, 250, 0, now=0)
    assert n == 3
    history = []
    for step in range(1, 60):  # lag alternates between empty and moderate every second
        lag = 0 if step % 2 else 150
        n = p.desired(n, lag, 0, now=step)
        history.append(n)
    assert set(history) == {3}, history


def test_policy_respects_scale_up_cooldown_and_bounds():
    p = ScalingPolicy(min_workers=2, max_workers=3, high_watermark=10, scale_up_cooldown_s=5)
    assert p.desired(0, 0, 0, now=0) == 2  # below min: start min
    assert p.desired(2, 1000, 0, now=1) == 3
    assert p.desired(3, 10**5, 0, now=2) == 3
    with pytest.raises(ValueError, match="max_workers"):
        ScalingPolicy(min_workers=3, max_workers=2)


def test_resource_bundles():
    assert resource_bundles(2, use_gpu=True) == [{"GPU": 1.0}, {"GPU": 1.0}]
    assert resource_bundles(1, use_gpu=False, cpus_per_actor=2) == [{"CPU": 2}]
    assert resource_bundles(0, use_gpu=True) == []


def test_each_actor_takes_the_template_with_its_own_name_and_metrics_port():
    pytest.importorskip("ray")
    from ear_stream_workers.supervisor import actor_config

    from ear_stream.stream.settings import WorkerConfig

    template = WorkerConfig(redis_url="redis://h:6379/0", models_dir=Path("m"), out_dir=Path("o"), batch_size=7,
                            metrics_port=9108, metrics_host="0.0.0.0", exit_when_idle_s=5.0)  # fmt: skip
    cfgs = [actor_config(template, i, "line") for i in range(3)]
    assert [c.name for c in cfgs] == ["line-0", "line-1", "line-2"]
    assert [c.metrics_port for c in cfgs] == [9108, 9109, 9110]  # actors sharing a node never share a port
    assert {c.metrics_host for c in cfgs} == {"0.0.0.0"} and {c.batch_size for c in cfgs} == {7}
    assert {c.exit_when_idle_s for c in cfgs} == {None}  # the supervisor decides when an actor leaves
    no_metrics = WorkerConfig(redis_url="redis://h:6379/0", models_dir=Path("m"), out_dir=Path("o"))
    assert actor_config(no_metrics, 2).metrics_port is None


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from ear_stream_workers.local import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_actors_score_everything_and_survive_a_kill(local_ray, tiny_model, synthetic_root, tmp_path):
    from ear_stream_workers.supervisor import Supervisor

    from ear_stream.io.results import read_results
    from ear_stream.stream import queue as q
    from ear_stream.stream.redis_server import RedisServer, free_port
    from ear_stream.stream.worker import WorkerConfig

    models = tmp_path / "models"
    models.mkdir()
    (models / "synthetic").symlink_to(tiny_model, target_is_directory=True)
    payloads = [p.read_bytes() for p in sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))]
    with RedisServer() as server:
        scfg = q.StreamConfig(stream="ray:in", group="g", dlq="ray:dlq", claim_idle_ms=2000)
        client = q.connect(server.url)
        ids = [f"r-{i}" for i in range(300)]
        for i, ident in enumerate(ids):
            q.push(client, "synthetic", payloads[i % len(payloads)], ident, None, scfg)
        template = WorkerConfig(
            redis_url=server.url,
            models_dir=models,
            out_dir=tmp_path / "out",
            stream=scfg,
            device="cpu",
            batch_size=16,
            flush_rows=32,
            flush_seconds=0.5,
            block_ms=200,
            claim_every_s=1.0,
            metrics_port=(port := free_port()),
        )
        calls = []
        sup = Supervisor(
            template, ScalingPolicy(min_workers=2, max_workers=2), poll_s=0.5, request_resources=calls.append
        )
        try:
            killed = False
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                sup.step()
                written = read_results(tmp_path / "out", dedupe=False).num_rows
                if not killed and written > 0:
                    local_ray.kill(sup.slots[0].handle, no_restart=False)  # crash one actor mid-run
                    killed = True
                if killed and sup.drained():
                    break
                time.sleep(0.5)
            assert killed and sup.drained()
            assert calls and calls[0] == [{"CPU": 1.0}, {"CPU": 1.0}]
            for i in range(2):  # actor i serves its metrics on port + i (the restarted one too)
                deadline = time.monotonic() + 60
                while True:
                    try:
                        text = _scrape(port + i)
                        break
                    except OSError:
                        assert time.monotonic() < deadline, f"no metrics from ear-actor-{i} on {port + i}"
                        time.sleep(0.5)
                assert f'ear_worker_up{{worker="ear-actor-{i}"}} 1.0' in text
        finally:
            sup.shutdown()
        assert calls[-1] == []
        table = read_results(tmp_path / "out")
        assert sorted(table["id"].to_pylist()) == sorted(ids)
        assert set(table["worker"].to_pylist()) <= {"ear-actor-0", "ear-actor-1"}


def _descendants(pid: int) -> set[int]:
    """pid and every process below it (from /proc), so that only this test's Ray is inspected."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, []))
    return found


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only(local_ray):
    """Every TCP listener of the local Ray (GCS, raylet, workers, agents) is on 127.0.0.1, none on *."""
    import os
    import re
    import shutil
    import subprocess

    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is not installed")

    @local_ray.remote
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    probe = Probe.remote()
    local_ray.get(probe.pid.remote())  # an actor exists: its worker's server listens too
    ours = _descendants(os.getpid())
    listeners = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & ours:
            listeners.append(line.split()[3])
    assert len(listeners) >= 3, listeners  # GCS, raylet, worker at least
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    assert all(addr.startswith(loopback) for addr in listeners), listeners
    local_ray.kill(probe)
