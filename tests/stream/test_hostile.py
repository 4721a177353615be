"""A line that one bad entry, one bad number or a full Redis cannot stop (hostile producers, careless operators).

Every run asserts the same invariant: pushed = Parquet rows + dead letters, the worker returned (alive to
the end), nothing pending.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_redis
from PIL import Image

from ear_stream.cli import main
from ear_stream.errors import EarStreamError
from ear_stream.inspect.thresholds import parse_policy
from ear_stream.io.decode import ImageDecodeError, decode_frame, frame_issue
from ear_stream.io.results import read_results
from ear_stream.model.artifact import ArtifactError, load_manifest
from ear_stream.stream import queue as q
from ear_stream.stream.worker import Worker, WorkerConfig


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads(synthetic_root) -> list[bytes]:
    return [p.read_bytes() for p in sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))]


def _cfg(redis_server, models_dir, out, scfg, **kw) -> WorkerConfig:
    base = dict(redis_url=redis_server.url, models_dir=models_dir, out_dir=out, stream=scfg, device="cpu",
                batch_size=8, flush_rows=32, flush_seconds=0.3, block_ms=100, claim_every_s=0.2,
                exit_when_idle_s=0.5)  # fmt: skip
    base.update(kw)
    return WorkerConfig(**base)


def _accounted(client, scfg, out, pushed: int) -> tuple[int, int]:
    """pushed = rows + dead letters, nothing pending; returns (rows, dead letters)."""
    rows = read_results(out, dedupe=False).num_rows if Path(out).exists() else 0
    dead = client.xlen(scfg.dlq)
    assert rows + dead == pushed, (rows, dead, pushed)
    assert q.backlog(client, scfg) == (0, 0)
    return rows, dead


# ----------------------------------------------------------------------------- numbers that fail open


@pytest.mark.parametrize("text", ["manual:nan", "sigma:nan", "manual:inf", "fpr:nan", "quantile:-inf"])
def test_non_finite_policies_are_refused(text):
    with pytest.raises(EarStreamError, match="finite"):
        parse_policy(text)


def test_cli_refuses_a_non_finite_threshold(tiny_model, synthetic_root, tmp_path):
    img = next((synthetic_root / "synthetic" / "test").rglob("*.png"))
    for value in ("nan", "inf"):
        res = CliRunner().invoke(main, ["score", str(img), "--model", str(tiny_model), "--out", str(tmp_path),
                                        "--threshold", value])  # fmt: skip
        assert res.exit_code == 2 and "finite number" in res.output


def test_a_manifest_with_a_nan_threshold_or_no_hash_is_refused(tiny_model, tmp_path):
    import shutil

    for field, value, message in (("threshold", float("nan"), "not a finite number"), ("weights_sha256", "", "weights_sha256"),
                                  ("config", {"base_channels": 10**6}, "base_channels")):  # fmt: skip
        copy = tmp_path / field
        shutil.copytree(tiny_model, copy)
        data = json.loads((copy / "manifest.json").read_text())
        if isinstance(value, dict):
            data[field].update(value)
        else:
            data[field] = value
        (copy / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match=message):
            load_manifest(copy)


def test_a_nan_score_is_an_anomaly_whatever_the_threshold(tiny_model):
    from ear_stream.inspect.pipeline import Pipeline

    pipe = Pipeline.from_artifact(tiny_model, device="cpu")
    import torch

    res = pipe._result(torch.tensor([float("nan"), 0.0, 1e9]), torch.zeros(3), None, None, None, None, None)
    assert res.is_anomaly.tolist() == [True, False, True]


# ----------------------------------------------------------------------------- formats and frames


def test_only_the_documented_formats_are_opened():
    gray = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    for fmt in ("GIF", "WEBP", "ICO"):
        with pytest.raises(ImageDecodeError) as info:
            decode_frame(_png(gray, fmt))
        assert info.value.reason == "unsupported_format"
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageDecodeError) as info:
        decode_frame(eps)
    assert info.value.reason == "unsupported_format"
    with pytest.raises(ImageDecodeError) as info:
        decode_frame(_png(gray)[:40])  # a PNG cut short: corrupt, not unsupported
    assert info.value.reason == "decode_error"


def test_blank_uniform_and_sliver_frames_are_flagged_and_textured_ones_are_not(payloads):
    black = np.zeros((64, 64, 3), np.uint8)
    grey = np.full((64, 64, 3), 200, np.uint8)
    sliver = (np.random.default_rng(1).random((8, 2000, 3)) * 255).astype(np.uint8)
    assert "near-constant" in frame_issue(black) and "near-constant" in frame_issue(grey)
    assert "aspect ratio" in frame_issue(sliver)
    assert frame_issue(decode_frame(payloads[0])[0]) is None


def test_reduced_decoding_keeps_the_original_size_and_uint8():
    big = (np.random.default_rng(2).random((1100, 900, 3)) * 255).astype(np.uint8)
    for fmt in ("PNG", "JPEG"):
        arr, size = decode_frame(_png(big, fmt), target=64)
        assert size == (1100, 900) and arr.dtype == np.uint8
        assert 4 * 64 <= min(arr.shape[:2]) < 900  # reduced, but never below 4× the model's side


# ----------------------------------------------------------------------------- the worker


@needs_redis
def test_a_far_future_id_is_scored_with_no_enqueue_time(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    client = q.connect(redis_server.url)
    q.ensure_group(client, stream_cfg)
    client.xadd(stream_cfg.stream, {"id": "future", "product": "synthetic", "image": payloads[0]},
                id="300000000000000-0")  # fmt: skip
    client.xadd(stream_cfg.stream, {"id": "after", "product": "synthetic", "image": payloads[1]})  # larger still
    stats = Worker(_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg)).run()
    assert stats["scored"] == 2
    rows = {r["id"]: r for r in read_results(tmp_path / "out").to_pylist()}
    assert rows["future"]["enqueued_at"] is None and rows["future"]["latency_ms"] is None
    _accounted(client, stream_cfg, tmp_path / "out", 2)


@needs_redis
def test_camera_faults_are_written_flagged_never_ok(redis_server, models_dir, stream_cfg, tmp_path):
    client = q.connect(redis_server.url)
    frames = {"black": np.zeros((80, 80, 3), np.uint8), "sliver": np.full((8, 400, 3), 90, np.uint8)}
    frames["sliver"][:, ::2] = 200  # textured, but 50:1
    for name, arr in frames.items():
        q.push(client, "synthetic", _png(arr), name, None, stream_cfg)
    Worker(_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg)).run()
    rows = {r["id"]: r for r in read_results(tmp_path / "out").to_pylist()}
    assert all(r["is_anomaly"] and r["frame_check"].startswith("invalid_frame") for r in rows.values())
    _accounted(client, stream_cfg, tmp_path / "out", 2)


@needs_redis
def test_a_model_that_fails_to_build_is_model_error(redis_server, tiny_model, stream_cfg, payloads, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "broken")
    data = json.loads((models / "broken" / "manifest.json").read_text())
    data["config"]["kernel_size"] = 7  # a value the U-Net cannot be built with
    (models / "broken" / "manifest.json").write_text(json.dumps(data))
    client = q.connect(redis_server.url)
    q.push(client, "broken", payloads[0], "x", None, stream_cfg)
    Worker(_cfg(redis_server, models, tmp_path / "out", stream_cfg)).run()
    (entry,) = client.xrange(stream_cfg.dlq)
    assert entry[1][b"reason"] == b"model_error"
    _accounted(client, stream_cfg, tmp_path / "out", 1)


@needs_redis
def test_a_full_redis_is_waited_out_and_nothing_is_lost(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    """noeviction at maxmemory: scoring goes on (acks free memory), dead letters wait, nothing is lost."""
    client = q.connect(redis_server.url)
    good = [f"ok-{i}" for i in range(6)]
    for ident in good:
        q.push(client, "synthetic", payloads[0], ident, None, stream_cfg)
    for i in range(3):
        q.push(client, "synthetic", b"\x89PNG\r\n\x1a\n broken", f"bad-{i}", None, stream_cfg)
    q.ensure_group(client, stream_cfg)
    old = client.config_get("maxmemory")["maxmemory"], client.config_get("maxmemory-policy")["maxmemory-policy"]
    client.setrange("ballast", 4_000_000, b"x")  # 4 MB from a tiny command: no big query buffer to shrink later
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] - 1_000_000)  # still full after the acks
    worker = Worker(_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg, exit_when_idle_s=None))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while worker.stats["scored"] < len(good) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.stats["scored"] == len(good) and worker.stats["redis_oom"] > 0
        assert client.xlen(stream_cfg.dlq) == 0 and thread.is_alive()  # dead letters wait for room
        client.delete("ballast")
        while client.xlen(stream_cfg.dlq) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
        thread.join(30)
        client.config_set("maxmemory", old[0])
        client.config_set("maxmemory-policy", old[1])
    assert not thread.is_alive()
    rows, dead = _accounted(client, stream_cfg, tmp_path / "out", 9)
    assert (rows, dead) == (6, 3)
    reasons = {e[1][b"reason"] for e in client.xrange(stream_cfg.dlq)}
    assert reasons == {b"decode_error"}  # never max_deliveries for the server's fault


@needs_redis
def test_hostile_entries_never_stop_the_loop(redis_server, models_dir, stream_cfg, payloads, tmp_path):
    """Random fields, ids, products and bytes: every run accounts for every entry, the worker returns."""
    rng = np.random.default_rng(21)
    client = q.connect(redis_server.url)
    q.ensure_group(client, stream_cfg)
    next_ms, n = 10**12, 160
    for i in range(n):
        kind = rng.integers(8)
        fields: dict = {"id": f"e{i}", "product": "synthetic", "image": payloads[i % len(payloads)]}
        if kind == 0:
            fields["image"] = rng.bytes(int(rng.integers(0, 300)))
        elif kind == 1:
            fields["product"] = rng.choice(["", "../etc", "a/b", "x\n", "synthetic\n", "nope", "é"])
        elif kind == 2:
            del fields[rng.choice(["id", "product", "image"])]
        elif kind == 3:
            fields["meta"] = rng.bytes(20)
        elif kind == 4:
            fields["id"] = "x" * int(rng.integers(200, 400))
        elif kind == 5:
            fields["image"] = fields["image"][: int(rng.integers(1, len(fields["image"])))]
        elif kind == 6:
            fields["image"] = _png(np.zeros((20, 20, 3), np.uint8), str(rng.choice(["GIF", "PNG", "BMP"])))
        next_ms += int(rng.choice([1, 10**6, 10**9]))  # some ids jump far into the future
        client.xadd(stream_cfg.stream, fields or {"junk": b"1"}, id=f"{next_ms}-{i}")
    stats = Worker(_cfg(redis_server, models_dir, tmp_path / "out", stream_cfg, batch_size=16)).run()
    rows, dead = _accounted(client, stream_cfg, tmp_path / "out", n)
    assert rows == stats["scored"] and dead == stats["dead_letters"] and rows > 0 and dead > 0


@pytest.mark.slow
@needs_redis
def test_huge_frames_keep_the_worker_within_a_memory_bound(redis_server, models_dir, stream_cfg, tmp_path):
    """Eight 6000×6000 frames in one batch of a 64-px model (5.6 GB before): decoded towards 256 px, never
    held at full size. The bound, 2.5 GB for the whole worker process, is stated in docs/design.md."""
    rng = np.random.default_rng(5)
    tile = (rng.random((600, 600)) * 60 + 90).astype(np.uint8)
    frame = np.repeat(np.tile(tile, (10, 10))[..., None], 3, axis=2)  # 6000×6000, compresses well as PNG
    client = q.connect(redis_server.url)
    data = _png(frame)
    for i in range(8):
        q.push(client, "synthetic", data, f"big-{i}", None, stream_cfg)
    script = (
        "import sys, json, resource; from ear_stream.stream.worker import Worker, WorkerConfig; "
        "Worker(WorkerConfig.from_dict(json.loads(sys.argv[1]))).run(); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    cfg = _cfg(redis_server, models_dir, tmp_path / "out", stream_cfg, batch_size=8, decode_threads=2)
    out = subprocess.run([sys.executable, "-c", script, json.dumps(cfg.to_dict())], check=True, timeout=300,
                         capture_output=True, text=True)  # fmt: skip
    peak_mb = int(out.stdout.split()[-1]) / 1024
    print(f"worker peak RSS with eight 6000x6000 frames in a batch: {peak_mb:.0f} MB")
    assert peak_mb < 2500, f"worker peak RSS {peak_mb:.0f} MB"
    assert read_results(tmp_path / "out").num_rows == 8
    _accounted(client, stream_cfg, tmp_path / "out", 8)


# ----------------------------------------------------------------------------- the smaller items


def test_product_names_are_matched_whole():
    from ear_stream.stream.protocol import check_product

    for bad in ("synthetic\n", "a/b", "", "../x", "-x", "x" * 65):
        with pytest.raises(q.ValidationError):
            check_product(bad)
    assert check_product("tile-2.v1") == "tile-2.v1"


def test_score_refuses_a_product_name_the_partition_would_rewrite(tiny_model, synthetic_root, tmp_path):
    img = next((synthetic_root / "synthetic" / "test").rglob("*.png"))
    res = CliRunner().invoke(main, ["score", str(img), "--model", str(tiny_model), "--out", str(tmp_path),
                                    "--product", "a/b"])  # fmt: skip
    assert res.exit_code == 1 and "product 'a/b' must be" in res.output


def test_a_long_file_name_does_not_lose_the_other_images(tiny_model, synthetic_root, tmp_path):
    import shutil

    src = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src[0], folder / ("n" * 240 + ".png"))
    shutil.copy(src[1], folder / "short.png")
    res = CliRunner().invoke(main, ["score", str(folder), "--model", str(tiny_model), "--out", str(tmp_path / "o"),
                                    "--save-maps", str(tmp_path / "maps")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert read_results(tmp_path / "o").num_rows == 2


def test_results_deduplicate_per_product_and_id(tmp_path):
    from datetime import datetime, timezone

    from ear_stream.io.results import ResultWriter

    now = datetime.now(timezone.utc)
    row = dict(id="same", score=0.1, normalized_score=0.1, is_anomaly=False, threshold=1.0, mask_ratio=0.1,
               mosaic_scale=8, model_version="v", worker="w", processed_at=now)  # fmt: skip
    writer = ResultWriter(tmp_path, "w")
    writer.write([{**row, "product": "line-a"}, {**row, "product": "line-b"}, {**row, "product": "line-a"}])
    table = read_results(tmp_path)
    assert sorted(table["product"].to_pylist()) == ["line-a", "line-b"]


def test_a_crafted_checkpoint_is_refused_in_one_line(tmp_path):
    import pickle

    from ear_stream.inspect.checkpoint import CheckpointError, load_checkpoint

    class Payload:
        def __reduce__(self):  # would run a command if unpickled
            return (print, ("pwned",))

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="never loaded with pickle") as info:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "weights_only=False" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("redis://:se/cret@127.0.0.1:6379/0", "percent-encode"),
        ("redis://:se#cret@127.0.0.1:6379/0", "percent-encode"),
        ("redis://:se?cret@127.0.0.1:6379/0", "percent-encode"),
        ("redis://:secret@127.0.0.1:99999/0", "port"),
        ("http://:secret@127.0.0.1:6379/0", "redis://"),
    ],
)
def test_broken_redis_urls_end_in_one_line_without_the_password(url, expect):
    res = CliRunner().invoke(main, ["status", "--redis", url])
    assert res.exit_code == 1 and expect in res.output
    assert "cret" not in res.output and "Traceback" not in res.output


@needs_redis
def test_dlq_list_escapes_ids_and_replay_stops_after_the_limit(redis_server, stream_cfg):
    client = q.connect(redis_server.url)
    q.ensure_group(client, stream_cfg)
    client.xadd(stream_cfg.stream, {"id": "x\n  1-0  forged", "product": "nope", "image": b"\x89PNG"})
    entries = q.read_new(client, stream_cfg, "w", 10, None)
    q.dead_letter(client, stream_cfg, [q.Rejection(entries[0], "unknown_product", "m")], "w")
    base = ["--redis", redis_server.url, "--stream", stream_cfg.stream, "--dlq", stream_cfg.dlq]
    listing = CliRunner().invoke(main, ["dlq", "list", *base])
    assert "x\\n  1-0  forged" in listing.output and "\n  1-0  forged" not in listing.output
    for _ in range(3):  # replay, fail again, three times: then refused
        assert CliRunner().invoke(main, ["dlq", "replay", *base]).exit_code == 0
        entries = q.read_new(client, stream_cfg, "w", 10, None)
        q.dead_letter(client, stream_cfg, [q.Rejection(entries[0], "unknown_product", "m")], "w")
    res = CliRunner().invoke(main, ["dlq", "replay", *base])
    assert res.exit_code == 2 and "replayed 3 times already" in res.output
    assert client.xlen(stream_cfg.dlq) == 1 and client.xlen(stream_cfg.stream) == 0


@needs_redis
def test_a_redis_user_without_stream_rights_gets_one_line(redis_server, models_dir, tmp_path):
    client = q.connect(redis_server.url)
    client.execute_command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@read", "+ping", "+info", "+config|get",
                           "-xgroup", "-xreadgroup")  # fmt: skip
    url = redis_server.url.replace("redis://", "redis://limited:pw@")
    res = CliRunner().invoke(main, ["worker", "--redis", url, "--models", str(models_dir), "--out", str(tmp_path),
                                    "--exit-when-idle", "0.1", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 1 and "may not" in res.output and "Traceback" not in res.output


@needs_redis
def test_a_poison_entry_dead_letters_with_its_last_error(redis_server, models_dir, stream_cfg, payloads, tmp_path,
                                                         monkeypatch):  # fmt: skip
    """Scoring fails every time: after max_deliveries the dead letter says what failed, not only how often."""
    from ear_stream.inspect.pipeline import Pipeline

    def broken(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("tensor shapes disagree in layer 3")

    monkeypatch.setattr(Pipeline, "score_images", broken)
    client = q.connect(redis_server.url)
    q.push(client, "synthetic", payloads[0], "poison", None, stream_cfg)
    stream_cfg.max_deliveries = 2
    cfg = _cfg(redis_server, models_dir, tmp_path / "out", stream_cfg, exit_when_idle_s=None, claim_every_s=0.1)
    worker = Worker(cfg)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 30
    while client.xlen(stream_cfg.dlq) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.stop()
    thread.join(30)
    (entry,) = client.xrange(stream_cfg.dlq)
    assert entry[1][b"reason"] == b"max_deliveries"
    assert b"last error: RuntimeError: tensor shapes disagree" in entry[1][b"message"]


def test_a_hot_reload_to_a_nan_threshold_keeps_the_old_one(tiny_model, tmp_path):
    import shutil

    from ear_stream.stream.worker import ModelRegistry

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "synthetic")
    registry = ModelRegistry(models, "cpu", None, reload_every_s=0.0)
    before = registry.get("synthetic").threshold
    data = json.loads((models / "synthetic" / "manifest.json").read_text())
    data["threshold"] = float("nan")
    (models / "synthetic" / "manifest.json").write_text(json.dumps(data) + " ")  # a new size: a new stat
    assert registry.get("synthetic").threshold == before
