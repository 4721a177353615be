"""Long training made safe: checkpoints and resume after SIGKILL, early stopping, curves, augmentation, compile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ear_stream.inspect import training
from ear_stream.inspect.augment import augment, batches_of, epoch_order, step_generator, steps_per_epoch
from ear_stream.inspect.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from ear_stream.inspect.training import train_model
from ear_stream.model.config import ModelConfig, TrainConfig

TRAIN_ARGS = [
    "--image-size", "32", "--width", "8", "--batch-size", "4", "--lr", "1e-3", "--epochs", "100",
    "--saliency", "spectral", "--hflip", "--jitter", "0.05", "--mosaic-scale", "8", "--simulate", "0.5", "--head",
]  # fmt: skip


def _train_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ear_stream.cli", "train", str(root), "--category", "synthetic",
            "--out", str(out), *TRAIN_ARGS, *extra]  # fmt: skip


def _env() -> dict[str, str]:
    # one thread in every run: bit-identity on CPU holds for a fixed thread count
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "weights.safetensors"))


@pytest.mark.slow
def test_a_run_killed_mid_way_and_resumed_reaches_the_uninterrupted_weights(synthetic_root, tmp_path):
    steps = "60"
    subprocess.run(_train_cmd(synthetic_root, tmp_path / "straight", "--max-steps", steps), env=_env(), check=True,
                   capture_output=True)  # fmt: skip

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(synthetic_root, out, "--max-steps", steps, "--checkpoint-every", "10"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    try:
        while not (out / CHECKPOINT_NAME).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ck = load_checkpoint(out / CHECKPOINT_NAME)
    assert 0 < ck["step"] < int(steps)
    assert not (out / "weights.safetensors").exists()

    done = subprocess.run(
        _train_cmd(synthetic_root, out, "--max-steps", steps, "--checkpoint-every", "10", "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    a, b = _weights(tmp_path / "straight"), _weights(out)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["steps"] == int(steps) and manifest["training"]["resumed"] is True


def test_resume_refuses_a_missing_or_foreign_checkpoint(synthetic_root, tmp_path):
    cfg = ModelConfig(image_size=32, saliency="none", base_channels=8)
    with pytest.raises(CheckpointError, match=r"no checkpoint\.pt"):
        train_model(synthetic_root, "synthetic", tmp_path / "m", cfg, TrainConfig(), max_steps=2, progress=False,
                    resume=True)  # fmt: skip
    train_model(synthetic_root, "synthetic", tmp_path / "m", cfg, TrainConfig(epochs=1, batch_size=4,
                checkpoint_every=1), mosaic_scale=8, max_steps=2, progress=False)  # fmt: skip
    other = TrainConfig(epochs=1, batch_size=4, checkpoint_every=1, lr=0.5)
    with pytest.raises(CheckpointError, match="another configuration"):
        train_model(synthetic_root, "synthetic", tmp_path / "m", cfg, other, mosaic_scale=8, max_steps=3,
                    progress=False, resume=True)  # fmt: skip


def test_patience_stops_and_keeps_the_best_weights(synthetic_root, tmp_path, monkeypatch):
    """Scripted held-out losses: best at step 2, then worse twice → stop at step 4 with step 2's weights."""
    cfg = lambda: ModelConfig(image_size=32, saliency="none", base_channels=8)  # noqa: E731
    base = dict(epochs=50, batch_size=4, lr=1e-3)
    ref = train_model(synthetic_root, "synthetic", tmp_path / "two", cfg(), TrainConfig(**base), mosaic_scale=8,
                      max_steps=2, progress=False)  # fmt: skip
    losses = iter([1.0, 0.5, 0.7, 0.9, 0.8, 0.95])
    monkeypatch.setattr(training, "heldout_loss", lambda *a, **k: next(losses))
    out = train_model(synthetic_root, "synthetic", tmp_path / "es", cfg(),
                      TrainConfig(**base, eval_every=1, patience=2), mosaic_scale=8, progress=False)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())["training"]
    assert manifest["stop_reason"] == "patience"
    assert manifest["steps"] == 4 and manifest["best_step"] == 2 and manifest["best_heldout_loss"] == 0.5
    a, b = _weights(ref), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert set(curve[0]) >= {"step", "minutes", "train_loss", "heldout_loss", "lr"}
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_patience_needs_eval_every():
    with pytest.raises(ValueError, match="--eval-every"):
        TrainConfig(patience=3)


def test_data_order_is_a_function_of_seed_and_step():
    """What makes resume exact: nothing depends on how many draws came before."""
    a = torch.rand(3, generator=step_generator(7, 11))
    torch.rand(100, generator=step_generator(7, 10))
    assert torch.equal(a, torch.rand(3, generator=step_generator(7, 11)))
    assert torch.equal(epoch_order(10, 1, 3), epoch_order(10, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    for n, bs in [(10, 4), (9, 4), (8, 4), (2, 8), (1, 8)]:
        assert len(batches_of(epoch_order(n, 0, 0), bs)) == steps_per_epoch(n, bs)


def test_augmentations_are_seeded_and_keep_the_texture():
    x = torch.rand(6, 3, 16, 16)
    cfg = TrainConfig(hflip=True, vflip=True, rot90=True)
    a, b = augment(x, cfg, step_generator(0, 5)), augment(x, cfg, step_generator(0, 5))
    assert torch.equal(a, b)
    for i in range(6):  # flips and quarter turns only move pixels
        assert torch.equal(a[i].flatten().sort().values, x[i].flatten().sort().values)
    j = augment(x, TrainConfig(jitter=0.1), step_generator(0, 5))
    assert (j - x).abs().max() <= 0.2 and float(j.min()) >= 0.0 and float(j.max()) <= 1.0
    assert torch.equal(augment(x, TrainConfig(), step_generator(0, 5)), x)


def test_augmentations_are_recorded(synthetic_root, tmp_path):
    cfg = ModelConfig(image_size=32, saliency="spectral", base_channels=8)
    out = train_model(synthetic_root, "synthetic", tmp_path / "m", cfg,
                      TrainConfig(epochs=1, batch_size=4, vflip=True, rot90=True, jitter=0.1), max_steps=2,
                      progress=False)  # fmt: skip
    training_json = json.loads((out / "manifest.json").read_text())["training"]
    assert training_json["augmentations"] == ["vflip", "rot90", "jitter:0.1"]
    assert training_json["vflip"] is True and training_json["hflip"] is False


def test_compiled_training_matches_eager_closely(synthetic_root, tmp_path, monkeypatch):
    """--compile traces the U-Net with dynamo and trains on the traced graph (inductor is left to the GPU run)."""
    monkeypatch.setenv("EAR_STREAM_COMPILE_BACKEND", "aot_eager")
    cfg = lambda: ModelConfig(image_size=32, saliency="none", base_channels=8)  # noqa: E731
    eager = train_model(synthetic_root, "synthetic", tmp_path / "e", cfg(), TrainConfig(epochs=1, batch_size=4),
                        mosaic_scale=8, max_steps=2, progress=False)  # fmt: skip
    graphs = []  # a backend that records every graph dynamo hands it: proof the compiled forward ran
    original = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda m, backend, dynamic=None: original(
            m, dynamic=dynamic, backend=lambda gm, ex: (graphs.append(backend), gm.forward)[1]
        ),
    )
    compiled = train_model(synthetic_root, "synthetic", tmp_path / "c", cfg(),
                           TrainConfig(epochs=1, batch_size=4, compile=True), mosaic_scale=8, max_steps=2,
                           progress=False)  # fmt: skip
    assert graphs and set(graphs) == {"aot_eager"}  # compile_module asked for the configured backend
    a, b = _weights(eager), _weights(compiled)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=5e-4)  # Adam moves each weight by ~lr per step
    assert json.loads((compiled / "manifest.json").read_text())["training"]["compile"] is True


@pytest.mark.cuda
def test_cuda_training_uses_bf16_and_channels_last(synthetic_root, tmp_path):
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8)
    out = train_model(synthetic_root, "synthetic", tmp_path / "g", cfg, TrainConfig(epochs=1, batch_size=4),
                      device="cuda", max_steps=3, progress=False)  # fmt: skip
    assert "bf16" in json.loads((out / "manifest.json").read_text())["training"]["precision"]
