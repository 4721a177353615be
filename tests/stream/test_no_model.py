"""A worker with no model refuses to start, in one line, before it reads (or dead-letters) anything."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from ear_stream.cli import main
from ear_stream.errors import ConfigError
from ear_stream.stream.models import check_models_dir
from ear_stream.stream.settings import WorkerConfig
from ear_stream.stream.worker import Worker


def test_one_models_folder_an_empty_one_and_a_missing_one_are_refused(models_dir, tmp_path):
    assert check_models_dir(models_dir) == ["synthetic"]
    with pytest.raises(ConfigError, match="one model's folder; pass the folder that holds it"):
        check_models_dir(models_dir / "synthetic")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no model"):
        check_models_dir(tmp_path / "empty")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_models_dir(tmp_path / "nowhere")


def test_the_worker_says_so_before_touching_redis(models_dir, tmp_path):
    """No redis-server is running on this URL: the model check comes first."""
    cfg = WorkerConfig(redis_url="redis://127.0.0.1:1/0", models_dir=models_dir / "synthetic", out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="one model's folder"):
        Worker(cfg)
    one = tmp_path / "one"
    shutil.copytree(models_dir / "synthetic", one / "synthetic")
    res = CliRunner().invoke(
        main, ["worker", "--redis", "redis://127.0.0.1:1/0", "--models", str(one / "synthetic"), "--out", str(tmp_path)]
    )
    assert res.exit_code == 1 and "one model's folder" in res.output and "Traceback" not in res.output, res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(
        main,
        ["cluster", "--redis", "redis://127.0.0.1:1/0", "--models", str(tmp_path / "empty"), "--out", str(tmp_path)],
    )
    assert res.exit_code == 1 and "holds no model" in res.output and "Traceback" not in res.output, res.output
