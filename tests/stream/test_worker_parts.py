"""The worker's parts on their own: the Redis-call policy, one model lookup per product per batch, intake."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from conftest import needs_redis

from ear_stream.stream import queue as q
from ear_stream.stream import redis_calls
from ear_stream.stream.intake import Intake
from ear_stream.stream.models import ModelRegistry
from ear_stream.stream.redis_calls import STOPPING_RETRIES, RedisCalls
from ear_stream.stream.scorer import LastErrors
from ear_stream.stream.worker import Worker, WorkerConfig


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(redis_calls, "BACKOFF_BASE_S", 0.0005)


class Failing:
    """A call that raises ``errors`` in turn, then returns ``result``; counts its tries."""

    def __init__(self, *errors: Exception, result: object = "ok") -> None:
        self.errors, self.tries, self.result = list(errors), 0, result

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def test_a_lost_connection_is_retried_and_counted():
    retries: list[int] = []
    calls = RedisCalls(None, on_retry=lambda: retries.append(1))  # type: ignore[arg-type]
    fn = Failing(redis.ConnectionError("gone"), redis.TimeoutError("slow"), redis.BusyLoadingError("loading"))
    assert calls(fn, "read") == "ok" and fn.tries == 4 and len(retries) == 3


def test_what_retrying_cannot_fix_is_raised_at_once():
    calls = RedisCalls(None)  # type: ignore[arg-type]
    fn = Failing(redis.AuthenticationError("invalid password"))
    with pytest.raises(redis.AuthenticationError):
        calls(fn, "read")
    assert fn.tries == 1
    fn = Failing(redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run 'xadd'"))
    with pytest.raises(q.RedisSetupError, match=r"may not push an entry .*ACL SETUSER"):
        calls(fn, "push an entry")
    assert fn.tries == 1


def test_a_stopping_process_gives_up_on_a_redis_that_is_gone():
    stopping = False
    calls = RedisCalls(None, stopping=lambda: stopping)  # type: ignore[arg-type]
    assert calls(Failing(*[redis.ConnectionError("gone")] * (STOPPING_RETRIES + 3)), "ack") == "ok"
    stopping = True
    fn = Failing(*[redis.ConnectionError("gone")] * (STOPPING_RETRIES + 3))
    with pytest.raises(redis.ConnectionError):
        calls(fn, "ack")
    assert fn.tries == STOPPING_RETRIES + 1


def test_a_full_redis_is_waited_out_or_raised_and_reported_once_per_episode(caplog):
    full: list[bool] = []
    calls = RedisCalls(None, on_full=full.append)  # type: ignore[arg-type]
    oom = redis.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'")
    assert calls(Failing(oom, oom), "ack") == "ok" and calls.full and full == [True, True]
    with pytest.raises(redis.OutOfMemoryError):
        calls(Failing(oom), "dead letter", raise_oom=True)  # the caller keeps its letters elsewhere
    assert sum("redis is full" in r.getMessage() for r in caplog.records) == 1
    calls.cleared()
    assert not calls.full and full[-1] is False


def test_the_producer_retries_through_the_same_policy():
    client = SimpleNamespace(
        xlen=Failing(redis.TimeoutError("slow"), result=3), xadd=Failing(redis.ConnectionError("gone"))
    )
    producer = q.Producer(client, q.StreamConfig(), max_backlog=10)  # type: ignore[arg-type]
    assert producer.push("p", b"png", "id-1") == "ok" and client.xadd.tries == 2 and client.xlen.tries == 2
    oom = redis.OutOfMemoryError("OOM command not allowed")
    client.xadd = Failing(oom)
    with pytest.raises(redis.OutOfMemoryError):  # a full Redis is the caller's to handle (backpressure upstream)
        producer.push("p", b"png", "id-2")


@needs_redis
def test_a_lost_group_is_recreated(redis_server, stream_cfg):
    client = q.connect(redis_server.url)
    calls = RedisCalls(client, stream_cfg)
    q.push(client, "p", b"x", "a", None, stream_cfg)
    entries = calls(lambda: q.read_new(client, stream_cfg, "c", 10, None), "read")
    assert [e.fields["id"] for e in entries] == [b"a"]  # the group did not exist: created, then read from 0


class CountingRegistry(ModelRegistry):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gets: list[str] = []

    def get(self, product: str):  # type: ignore[no-untyped-def]
        self.gets.append(product)
        return super().get(product)


@pytest.fixture(scope="module")
def images(synthetic_root) -> list[bytes]:
    return [p.read_bytes() for p in sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))][:6]


def _entry(i: int, product: str, image: bytes) -> q.Entry:
    return q.Entry(f"{i + 1}-0", {"id": f"e{i}".encode(), "product": product.encode(), "image": image})


def test_intake_looks_each_product_up_once_per_batch(models_dir, images, tmp_path):
    registry = CountingRegistry(models_dir, "cpu", None)
    cfg = WorkerConfig(redis_url="redis://127.0.0.1:1/0", models_dir=models_dir, out_dir=tmp_path, device="cpu")
    intake = Intake(cfg, registry, LastErrors())
    try:
        entries = [_entry(i, "synthetic", img) for i, img in enumerate(images)] + [_entry(9, "nope", images[0])]
        prepared = intake.prepare(entries)
        assert registry.gets == ["synthetic", "nope"]  # 7 entries, 2 products: 2 lookups
        assert len(prepared.items) == len(images) and set(prepared.pipes) == {"synthetic"}
        assert [r.reason for r in prepared.rejections] == [q.UNKNOWN_PRODUCT]
        intake.prepare(entries[:2])
        assert registry.gets == ["synthetic", "nope", "synthetic"]  # a new batch looks up again: reloads land here
    finally:
        intake.close()


def test_entries_past_the_pixel_budget_wait_for_the_next_batch(models_dir, images, tmp_path):
    cfg = WorkerConfig(redis_url="redis://127.0.0.1:1/0", models_dir=models_dir, out_dir=tmp_path, device="cpu",
                       max_batch_pixels=1)  # fmt: skip
    intake = Intake(cfg, CountingRegistry(models_dir, "cpu", None), LastErrors())
    try:
        first = intake.prepare([_entry(i, "synthetic", img) for i, img in enumerate(images[:3])])
        assert len(first.items) == 1 and len(intake.deferred) == 2  # at least one per batch, the rest wait
        second = intake.prepare([])
        assert len(second.items) == 1 and len(intake.deferred) == 1
    finally:
        intake.close()


@needs_redis
def test_the_worker_looks_a_model_up_once_per_batch(redis_server, models_dir, images, stream_cfg, tmp_path: Path):
    client = q.connect(redis_server.url)
    for i in range(12):
        q.push(client, "synthetic", images[i % len(images)], f"n-{i}", None, stream_cfg)
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=models_dir, out_dir=tmp_path / "out", stream=stream_cfg,
                       device="cpu", batch_size=4, flush_seconds=0.2, block_ms=50, exit_when_idle_s=0.3)  # fmt: skip
    registry = CountingRegistry(models_dir, "cpu", None)
    stats = Worker(cfg, registry).run()
    assert stats["scored"] == 12
    assert len(registry.gets) <= 1 + stats["batches"], (len(registry.gets), stats)  # warm-up + one per batch
