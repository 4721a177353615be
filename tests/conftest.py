"""Shared fixtures: generated and real data, a tiny trained model, a poisoned-output switch, a review station."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import write_synthetic_category
from ear_stream.model.config import ModelConfig, TrainConfig

REAL_DATA = Path(os.environ.get("EAR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "magnetic_tile" / "train" / "good").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (set EAR_DATA)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_category(root, "synthetic", n_train=16, n_test_good=6, n_test_defect=5)
    return root


@pytest.fixture(scope="session")
def tiny_model(synthetic_root, tmp_path_factory) -> Path:
    """A 64-px plain model (no simulated defects, no head) trained for a few steps on the generated category."""
    out = tmp_path_factory.mktemp("models") / "synthetic"
    cfg = ModelConfig(image_size=64, saliency="none", base_channels=8)
    return train_model(
        synthetic_root,
        "synthetic",
        out,
        cfg,
        TrainConfig(epochs=1, batch_size=4, lr=1e-3, simulate=0.0),  # plain: the tests that need a head train one
        mosaic_scale=8,
        progress=False,
        max_steps=3,
    )


@pytest.fixture(scope="session")
def headed_models(synthetic_root, tmp_path_factory) -> Path:
    """MODELS/synthetic: a 64-px model with simulated defects and a learned head, a few steps old (the
    learning-from-the-line tests refine it; copy it before changing anything)."""
    models = tmp_path_factory.mktemp("headed-models")
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8, head=True, head_width=4)
    train_model(synthetic_root, "synthetic", models / "synthetic", cfg, TrainConfig(batch_size=4, simulate=0.5),
                mosaic_scale=8, progress=False, max_steps=4)  # fmt: skip
    return models


@pytest.fixture
def poisoned_outputs():
    """Make the extension fill outputs with NaN before its kernels write them."""
    from ear_stream.model import ops

    if ops.backend() != "extension":
        yield
        return
    torch.ops.ear._set_poison(True)
    try:
        yield
    finally:
        torch.ops.ear._set_poison(False)


#: tests that talk to a real redis-server carry this marker; they skip cleanly where none is installed
needs_redis = pytest.mark.redis
HAS_REDIS = any(os.access(os.path.join(p, "redis-server"), os.X_OK) for p in os.environ.get("PATH", "").split(":"))


def pytest_collection_modifyitems(config, items) -> None:  # type: ignore[no-untyped-def]
    """Markers decide what skips and why: ``redis`` without redis-server, ``cuda`` without a GPU."""
    skips = {
        "redis": None if HAS_REDIS else "redis-server is not installed (make test installs it)",
        "cuda": None if torch.cuda.is_available() else "needs a CUDA device",
    }
    for item in items:
        for marker, reason in skips.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server on a free loopback port, stopped after the module."""
    from ear_stream.stream.redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def models_dir(tiny_model, tmp_path_factory) -> Path:
    """MODELS_DIR with the tiny model as product ``synthetic``."""
    root = tmp_path_factory.mktemp("models")
    (root / "synthetic").symlink_to(tiny_model, target_is_directory=True)
    return root


@pytest.fixture
def stream_cfg():
    """Fresh stream, DLQ and verdict names per test (one shared redis-server)."""
    import uuid

    from ear_stream.stream import queue as q

    tag = uuid.uuid4().hex[:8]
    return q.StreamConfig(
        stream=f"t:{tag}:in", group="g", dlq=f"t:{tag}:dlq", results=f"t:{tag}:out", claim_idle_ms=300
    )


@pytest.fixture
def line(tmp_path, tiny_model, synthetic_root) -> dict:
    """What a line leaves behind (the review station's tests): models/synthetic (a private copy), results with heatmaps, the images."""
    from ear_stream.inspect.pipeline import Pipeline
    from ear_stream.inspect.scoring import score_files
    from ear_stream.io.datasets import test_samples

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "synthetic")
    samples = test_samples(synthetic_root, "synthetic")
    pipe = Pipeline.from_artifact(models / "synthetic", device="cpu")
    results = tmp_path / "results"
    score_files(pipe, [s.path for s in samples], results, "synthetic", save_maps=tmp_path / "maps", progress=False)
    truth = {str(s.path): s.defect != "good" for s in samples}
    labels = results.with_name("results-labels")  # the station's default: next to the results tree
    return {"models": models, "results": results, "labels": labels, "images": synthetic_root, "truth": truth}


@pytest.fixture
def station(line):
    """Serve a station factory: ``station(**overrides)`` starts one with the line's folders."""
    from ear_stream.review.config import ReviewConfig
    from ear_stream.review.serve import BackgroundStation
    from ear_stream.stream.redis_server import free_port

    started = []

    def start(**overrides) -> BackgroundStation:  # type: ignore[no-untyped-def]
        options = {
            "results": line["results"],
            "models": line["models"],
            "images": (line["images"],),
            "port": free_port(),
            "passed_sample": 1.0,
            "reviewer": "tester",
            **overrides,
        }
        served = BackgroundStation(ReviewConfig(**options)).__enter__()
        started.append(served)
        return served

    yield start
    for served in started:
        served.__exit__(None, None, None)


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB tmpfs (root only; skipped elsewhere): disk-full faults happen for real, then it is unmounted."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(disk: Path) -> Path:
    """Take every free byte of the disk (a real ENOSPC for the next write); the ballast file frees it again."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return ballast
