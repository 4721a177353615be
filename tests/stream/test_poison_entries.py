"""Entries that break a parser, not just a rule: a dead letter each, never a crashed worker (red team, issue 27).

``'[' * 7000`` is 7 KB of meta, under the 16 KB limit, and raises RecursionError in ``json.loads``: it used to
escape the field checks, crash the worker, and after the restarts dead-letter its whole batch as
``max_deliveries``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import needs_redis
from PIL import Image

from ear_stream.io.results import read_results
from ear_stream.stream import queue as q
from ear_stream.stream.protocol import ValidationError, validate_fields
from ear_stream.stream.worker import Worker, WorkerConfig

DEEP = "[" * 7000 + "]" * 7000


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_deeply_nested_meta_is_an_invalid_field():
    with pytest.raises(ValidationError, match="nested too deeply") as err:
        validate_fields("p", "i", b"x", DEEP, 1 << 20)
    assert err.value.reason == "invalid_field"


@needs_redis
def test_a_poison_entry_is_one_dead_letter_and_its_batch_is_scored(redis_server, models_dir, stream_cfg, tmp_path):
    client = q.connect(redis_server.url)
    image = _png()
    for i in range(6):
        q.push(client, "synthetic", image, f"good-{i}", {"i": i}, stream_cfg)
    client.xadd(stream_cfg.stream, {"id": "poison", "product": "synthetic", "image": image, "meta": DEEP})
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=models_dir, out_dir=tmp_path / "out", stream=stream_cfg,
                       device="cpu", batch_size=8, flush_seconds=0.2, block_ms=100, exit_when_idle_s=0.5)  # fmt: skip
    stats = Worker(cfg).run()
    assert stats["scored"] == 6 and stats["dead_letters"] == 1
    letters = client.xrange(stream_cfg.dlq)
    assert [f[b"reason"] for _, f in letters] == [b"invalid_field"]
    assert sorted(read_results(tmp_path / "out").column("id").to_pylist()) == [f"good-{i}" for i in range(6)]


@needs_redis
def test_any_failure_reading_an_entry_is_its_dead_letter(redis_server, models_dir, stream_cfg, tmp_path, monkeypatch):
    """Whatever breaks while an entry's fields are read (a parser bug no check foresaw) stays with that entry."""
    real = q.parse_entry

    def fragile(entry, max_image_bytes):  # type: ignore[no-untyped-def]
        if entry.fields.get(b"id", entry.fields.get("id")) in (b"fragile", "fragile"):
            raise RuntimeError("a parser bug")
        return real(entry, max_image_bytes)

    monkeypatch.setattr(q, "parse_entry", fragile)
    client = q.connect(redis_server.url)
    for ident in ("a", "fragile", "b"):
        q.push(client, "synthetic", _png(), ident, None, stream_cfg)
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=models_dir, out_dir=tmp_path / "out", stream=stream_cfg,
                       device="cpu", batch_size=8, flush_seconds=0.2, block_ms=100, exit_when_idle_s=0.5)  # fmt: skip
    stats = Worker(cfg).run()
    assert stats["scored"] == 2 and stats["dead_letters"] == 1
    ((_, letter),) = client.xrange(stream_cfg.dlq)
    assert letter[b"reason"] == b"invalid_field" and b"RuntimeError: a parser bug" in letter[b"message"]
