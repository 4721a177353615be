"""What the supervisor asks Ray for. The scaling policy itself is :mod:`ear_stream.stream.scaling` (pure, no Ray),
so that the ``cluster`` verb reads its option defaults without importing this package; re-exported here."""

from ear_stream.stream.scaling import DEFAULT_POLL_S, ScalingPolicy

__all__ = ["DEFAULT_POLL_S", "ScalingPolicy", "resource_bundles"]


def resource_bundles(count: int, use_gpu: bool, cpus_per_actor: float = 1.0) -> list[dict[str, float]]:
    """What to ask the Ray autoscaler for: one bundle per wanted actor."""
    bundle = {"GPU": 1.0} if use_gpu else {"CPU": cpus_per_actor}
    return [dict(bundle) for _ in range(count)]
