"""A bad model file never stops good scoring: every failed reload keeps the model in hand, reported once."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from ear_stream.stream.models import ModelRegistry


@pytest.fixture
def registry_and_dir(tiny_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "synthetic")
    return ModelRegistry(models, "cpu", None, reload_every_s=0.0), models / "synthetic"


def _replace(path, content: bytes) -> None:
    path.write_bytes(content)


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 200_000 + b"]" * 200_000,  # RecursionError inside json, outside the handled errors before
        b"{",  # half-written
        b"\x00\x01\x02",
        b'{"config": 3, "threshold": 0.5}',
        b"[]",
    ],
    ids=["deeply-nested", "truncated", "binary", "wrong-types", "not-an-object"],
)
def test_a_broken_manifest_keeps_the_model_in_hand_and_is_reported_once(registry_and_dir, content, caplog):
    registry, model = registry_and_dir
    pipe = registry.get("synthetic")
    version = pipe.model_version
    _replace(model / "manifest.json", content)
    with caplog.at_level(logging.WARNING, logger="ear_stream.stream.worker"):
        for _ in range(5):
            assert registry.get("synthetic") is pipe and pipe.model_version == version
            score = pipe.score_tensor(torch.rand(1, 3, 64, 64)).scores
            assert torch.isfinite(torch.from_numpy(score)).all()
            (model / "manifest.json").touch()  # a new stat each time: a reload is attempted each time
    assert "synthetic" in registry.reload_errors and registry.reload_failures >= 5
    warnings = [r for r in caplog.records if "not reloading" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per distinct failure, not per try


def test_weights_that_do_not_fit_keep_the_model_and_a_good_manifest_clears_the_error(registry_and_dir, tiny_model):
    registry, model = registry_and_dir
    pipe = registry.get("synthetic")
    data = json.loads((model / "manifest.json").read_text())
    data["config"]["base_channels"] = 16  # the weights are width 8: load_state_dict fails
    (model / "manifest.json").write_text(json.dumps(data))
    assert registry.get("synthetic") is pipe and "synthetic" in registry.reload_errors
    shutil.copy(tiny_model / "manifest.json", model / "manifest.json")
    (model / "manifest.json").write_text((model / "manifest.json").read_text() + "\n")  # new stat, same content
    assert registry.get("synthetic") is not None and "synthetic" not in registry.reload_errors


def test_a_config_change_with_the_same_weights_reloads_as_a_new_version(registry_and_dir):
    registry, model = registry_and_dir
    pipe = registry.get("synthetic")
    data = json.loads((model / "manifest.json").read_text())
    data["config"]["scoring"]["median"] = not data["config"]["scoring"]["median"]
    (model / "manifest.json").write_text(json.dumps(data))
    new = registry.get("synthetic")
    assert new is not pipe and new.model_version != pipe.model_version
    assert new.config.scoring.median != pipe.config.scoring.median
