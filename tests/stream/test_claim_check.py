"""Claim-check payloads (docs/design.md, "Claim-check entries"): the image in a store, its reference in Redis.

On a real redis-server, with a local-folder store and a real S3-compatible server (moto, signed requests):
``push --store`` puts large images in the store and XADDs their reference, small ones inline; the worker
fetches, verifies and scores them into the same rows (``payload_uri`` says where the image was) and
deletes or keeps the objects after the rows are durable. Faults: an object deleted before scoring, bytes
corrupted, a size that lies, an object too large, a worker without a store — each a dead letter with its
own reason that ``dlq replay`` brings back once the object is right; the store SIGKILLed mid-run and a
slow store — entries wait, nothing is dead-lettered, nothing is lost.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_redis
from PIL import Image
from s3_server import HAS_MOTO, S3Server, SlowProxy

from ear_stream.cli import main
from ear_stream.io.results import read_results
from ear_stream.io.store import BlobStore
from ear_stream.stream import dlq as dlq_tools
from ear_stream.stream import queue as q
from ear_stream.stream.protocol import Entry, parse_entry, reference_fields
from ear_stream.stream.worker import Worker, WorkerConfig

needs_moto = pytest.mark.skipif(not HAS_MOTO, reason="moto_server not installed (make install puts it in .venv)")


@pytest.fixture(scope="module")
def parts(synthetic_root) -> list[bytes]:
    """16 distinct PNGs (a pixel each apart): one object per entry, as on a line where no two frames repeat."""
    sources = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))
    out = []
    for i in range(16):
        arr = np.array(Image.open(sources[i % len(sources)]).convert("RGB"))
        arr[0, 0] = (i, 255 - i, i * 7 % 256)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def worker_cfg(redis_server, models_dir, stream_cfg, out: Path, **extra) -> WorkerConfig:  # type: ignore[no-untyped-def]
    return WorkerConfig(
        redis_url=redis_server.url,
        models_dir=models_dir,
        out_dir=out,
        stream=stream_cfg,
        device="cpu",
        batch_size=8,
        flush_rows=8,
        flush_seconds=0.2,
        block_ms=100,
        claim_every_s=0.2,
        exit_when_idle_s=1.0,
        **extra,
    )


def push_claims(client, stream_cfg, store: BlobStore, items: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    producer = q.Producer(client, stream_cfg, store=store)
    for ident, data in items.items():
        producer.push("synthetic", data, ident)


def letters_by_reason(client, stream_cfg) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """{original id: reason} of the dead-letter stream."""
    return {
        letter.id: letter.reason for letter in dlq_tools.iter_dead_letters(client, stream_cfg) if letter.id is not None
    }


# ---------------------------------------------------------------------------------------------- protocol
def entry(**fields: str | bytes) -> Entry:
    return Entry("1-0", {k: v.encode() if isinstance(v, str) else v for k, v in fields.items()})


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"uri": f"s3://b/ab/{SHA}.png", "sha256": SHA, "bytes": "10", "image": b"x"}, "invalid_field"),
        ({"uri": f"s3://b/ab/{SHA}.png", "bytes": "10"}, "invalid_field"),
        ({"uri": f"s3://b/ab/{SHA}.png", "sha256": "xyz", "bytes": "10"}, "invalid_field"),
        ({"uri": f"s3://b/ab/{SHA}.png", "sha256": SHA, "bytes": "ten"}, "invalid_field"),
        ({"uri": f"s3://b/ab/{SHA}.png", "sha256": SHA, "bytes": "0"}, "invalid_field"),
        ({"uri": f"s3://b/ab/{SHA}.png", "sha256": SHA, "bytes": str(10**12)}, "too_large"),
        ({"uri": "s3://b/ab/" + "cd" * 32, "sha256": SHA, "bytes": "10"}, "payload_invalid"),
        ({"uri": "file:///etc/passwd", "sha256": SHA, "bytes": "10"}, "payload_invalid"),
        ({"uri": "", "sha256": SHA, "bytes": "10"}, "invalid_field"),
        ({"uri": f"s3://b/ab/{SHA}", "sha256": SHA, "bytes": "10", "width": "-3"}, "invalid_field"),
        ({"uri": b"\xff\xfe", "sha256": SHA, "bytes": "10"}, "invalid_field"),
    ],
)
def test_a_malformed_reference_is_refused_with_its_reason(fields, reason):
    with pytest.raises(q.ValidationError) as err:
        parse_entry(entry(id="a", product="synthetic", **fields), q.DEFAULT_MAX_IMAGE_BYTES)
    assert err.value.reason == reason, err.value


def test_a_reference_parses_with_its_size():
    fields = reference_fields(f"s3://b/p/ab/{SHA}.png", SHA, 1234, (480, 640))
    ve = parse_entry(entry(id="a", product="synthetic", **fields), q.DEFAULT_MAX_IMAGE_BYTES)
    assert ve.ref is not None and ve.image == b""
    assert (ve.ref.sha256, ve.ref.bytes, ve.ref.size) == (SHA, 1234, (480, 640))


# ---------------------------------------------------------------------------------------------- local store
@needs_redis
def test_push_with_a_store_sends_references_and_the_worker_scores_them(
    redis_server, models_dir, stream_cfg, parts, tmp_path
):
    client = q.connect(redis_server.url)
    folder = tmp_path / "payloads"
    for i, data in enumerate(parts[:10]):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"p{i:02d}.png").write_bytes(data)
    tiny = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(tiny, format="PNG")
    (tmp_path / "in" / "small.png").write_bytes(tiny.getvalue())
    smallest_big = min(len(d) for d in parts[:10])
    assert len(tiny.getvalue()) < smallest_big
    result = CliRunner().invoke(
        main,
        [
            "push", str(tmp_path / "in"), "--redis", redis_server.url, "--product", "synthetic",
            "--stream", stream_cfg.stream, "--store", str(folder), "--inline-below", str(smallest_big),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    entries = client.xrange(stream_cfg.stream)
    claims = [f for _, f in entries if b"uri" in f]
    assert len(entries) == 11 and len(claims) == 10
    assert all(b"image" not in f and int(f[b"bytes"]) >= smallest_big for f in claims)
    assert all(int(f[b"width"]) > 0 and int(f[b"height"]) > 0 for f in claims)
    assert BlobStore(folder).usage().objects == 10

    out = tmp_path / "out"
    stats = Worker(worker_cfg(redis_server, models_dir, stream_cfg, out, payload_store=str(folder))).run()
    table = read_results(out)
    assert table.num_rows == 11 and client.xlen(stream_cfg.dlq) == 0
    uris = dict(zip(table["id"].to_pylist(), table["payload_uri"].to_pylist(), strict=True))
    assert uris[str(tmp_path / "in" / "small.png")] is None
    assert sum(u is not None and u.startswith(folder.as_uri()) for u in uris.values()) == 10
    # the claims are consumed once the rows are durable: the store is empty again
    deadline = time.monotonic() + 5
    while BlobStore(folder).usage().objects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert BlobStore(folder).usage().objects == 0
    assert stats["payloads_fetched"] == 10 and stats["payloads_deleted"] == 10


@needs_redis
def test_payload_after_keep_leaves_the_objects_and_scores_match_inline(
    redis_server, models_dir, stream_cfg, parts, tmp_path
):
    client = q.connect(redis_server.url)
    store = BlobStore(tmp_path / "payloads")
    push_claims(client, stream_cfg, store, {f"c{i}": d for i, d in enumerate(parts[:8])})
    for i, d in enumerate(parts[:8]):
        q.push(client, "synthetic", d, f"i{i}", None, stream_cfg)
    out = tmp_path / "out"
    Worker(
        worker_cfg(redis_server, models_dir, stream_cfg, out, payload_store=str(store.local), payload_after="keep")
    ).run()
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert len(rows) == 16 and store.usage().objects == 8
    for i in range(8):  # the same bytes score the same, inline or by reference
        assert rows[f"c{i}"]["score"] == pytest.approx(rows[f"i{i}"]["score"], rel=1e-6)


@needs_redis
def test_bad_payloads_are_dead_letters_with_their_reason_and_replay_once_fixed(
    redis_server, models_dir, stream_cfg, parts, tmp_path
):
    client = q.connect(redis_server.url)
    store = BlobStore(tmp_path / "payloads")
    items = {f"ok{i}": parts[i] for i in range(6)}
    items.update(gone=parts[6], corrupt=parts[7], oversized=parts[8])
    push_claims(client, stream_cfg, store, items)
    refs = {ident: store.put(data) for ident, data in items.items()}
    store.delete(refs["gone"])  # deleted before scoring
    corrupt = store.local / refs["corrupt"].key
    corrupt.write_bytes(corrupt.read_bytes()[:-1] + b"\x00")  # one byte flipped, same size
    # an object that grew past the limit the worker accepts, though its reference says otherwise
    big = store.local / refs["oversized"].key
    big.write_bytes(big.read_bytes() + b"\x00" * (max(len(d) for d in parts) + 2048))
    # a reference whose size lies
    fields = reference_fields(refs["ok0"].uri, refs["ok0"].sha256, refs["ok0"].bytes + 1)
    client.xadd(stream_cfg.stream, {"id": "liar", "product": "synthetic", **fields})
    out = tmp_path / "out"
    cfg = worker_cfg(redis_server, models_dir, stream_cfg, out, payload_store=str(store.local), payload_after="keep")
    cfg.stream.max_image_bytes = max(len(d) for d in parts) + 1024
    Worker(cfg).run()
    assert sorted(read_results(out)["id"].to_pylist()) == sorted(f"ok{i}" for i in range(6))
    assert letters_by_reason(client, stream_cfg) == {
        "gone": "payload_missing",
        "corrupt": "payload_mismatch",
        "oversized": "too_large",
        "liar": "payload_mismatch",
    }
    assert q.backlog(client, stream_cfg) == (0, 0) and client.xlen(stream_cfg.stream) == 0

    # the object comes back whole: dlq replay puts the reference back, and it scores
    store.put(items["gone"])
    letters = list(dlq_tools.iter_dead_letters(client, stream_cfg, reason="payload_missing"))
    assert dlq_tools.replay(client, stream_cfg, letters) == (1, [])
    Worker(cfg).run()
    assert "gone" in read_results(out)["id"].to_pylist()


@needs_redis
def test_a_worker_without_a_store_dead_letters_references_it_cannot_resolve(
    redis_server, models_dir, stream_cfg, parts, tmp_path
):
    client = q.connect(redis_server.url)
    push_claims(client, stream_cfg, BlobStore(tmp_path / "payloads"), {"a": parts[0]})
    q.push(client, "synthetic", parts[1], "inline", None, stream_cfg)
    out = tmp_path / "out"
    Worker(worker_cfg(redis_server, models_dir, stream_cfg, out)).run()
    assert read_results(out)["id"].to_pylist() == ["inline"]
    letters = list(dlq_tools.iter_dead_letters(client, stream_cfg))
    assert [(x.id, x.reason, x.replayable) for x in letters] == [("a", "payload_invalid", True)]
    assert "--store" in letters[0].message


# ---------------------------------------------------------------------------------------------- S3
@pytest.fixture
def s3():
    if not HAS_MOTO:
        pytest.skip("moto_server not installed (make install puts it in .venv)")
    with S3Server() as server:
        yield server


@needs_redis
@needs_moto
def test_claim_checks_through_a_real_s3_server(redis_server, models_dir, stream_cfg, parts, tmp_path, s3):
    client = q.connect(redis_server.url)
    uri = s3.store_uri("line-7")
    store = BlobStore(uri)
    push_claims(client, stream_cfg, store, {f"s{i}": d for i, d in enumerate(parts[:8])})
    fields = client.xrange(stream_cfg.stream)[0][1]
    assert fields[b"uri"].startswith(b"s3://ear-payloads/line-7/") and b"secret" not in fields[b"uri"]
    out = tmp_path / "out"
    Worker(worker_cfg(redis_server, models_dir, stream_cfg, out, payload_store=uri)).run()
    table = read_results(out)
    assert table.num_rows == 8 and client.xlen(stream_cfg.dlq) == 0
    assert all(u.startswith("s3://ear-payloads/line-7/") for u in table["payload_uri"].to_pylist())
    deadline = time.monotonic() + 5
    while store.usage().objects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.usage().objects == 0


@needs_redis
@needs_moto
def test_the_store_killed_mid_run_loses_nothing_and_dead_letters_nothing(
    redis_server, models_dir, stream_cfg, parts, tmp_path, s3
):
    client = q.connect(redis_server.url)
    uri = s3.store_uri("line-8")
    store = BlobStore(uri)
    items = {f"k{i:02d}": d for i, d in enumerate(parts)}
    push_claims(client, stream_cfg, store, items)
    s3.kill()  # SIGKILL: every fetch now fails to connect (pyarrow's client retries each for ~6 s)
    out = tmp_path / "out"
    cfg = worker_cfg(redis_server, models_dir, stream_cfg, out, payload_store=uri, payload_after="keep")
    cfg.exit_when_idle_s = 2.0
    worker = Worker(cfg)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while worker.stats["payload_fetch_retries"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.stats["payload_fetch_retries"] >= 1, worker.stats
    assert client.xlen(stream_cfg.dlq) == 0 and worker.stats["scored"] == 0
    assert thread.is_alive()  # waiting, not idle: entries are in hand
    # the store comes back at its address with its objects (a new moto, filled first, then put behind the port)
    with S3Server() as revived:
        refill = BlobStore(revived.store_uri("line-8"))
        for data in items.values():
            refill.put(data)
        back = SlowProxy(revived.port, port=s3.port)
        try:
            thread.join(90)
        finally:
            back.close()
    assert not thread.is_alive()
    assert sorted(read_results(out)["id"].to_pylist()) == sorted(items)
    assert client.xlen(stream_cfg.dlq) == 0 and q.backlog(client, stream_cfg) == (0, 0)


@needs_redis
@needs_moto
def test_a_slow_store_is_fetched_concurrently(redis_server, models_dir, stream_cfg, parts, tmp_path, s3):
    client = q.connect(redis_server.url)
    store = BlobStore(s3.store_uri("line-9"))
    items = {f"w{i:02d}": d for i, d in enumerate(parts)}
    push_claims(client, stream_cfg, store, items)
    proxy = SlowProxy(s3.port, delay_s=0.25)
    try:
        out = tmp_path / "out"
        cfg = worker_cfg(
            redis_server, models_dir, stream_cfg, out, payload_store=s3.store_uri("line-9", proxy.port),
            payload_after="keep", fetch_threads=16,
        )  # fmt: skip
        cfg.batch_size = 16
        started = time.monotonic()
        Worker(cfg).run()
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert sorted(read_results(out)["id"].to_pylist()) == sorted(items)
    assert client.xlen(stream_cfg.dlq) == 0
    # 16 objects, two slowed requests each (HEAD, GET): one after the other that is >= 8 s
    assert took < 8.0, took
