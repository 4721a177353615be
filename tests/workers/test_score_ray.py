"""``ear-stream score --ray`` (workers/batch.py): Ray Data on a local Ray, the same rows as ``score``.

One process per run (the CLI in a subprocess: its local Ray starts and stops with it). The same images
scored with and without ``--ray`` give the same ids and scores; an undecodable file is reported per file
(exit status 2) and the rest is written; a rerun skips the ids already in OUT and writes nothing new.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ear_stream.io.results import read_results


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ear_stream.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def inputs(synthetic_root, tmp_path) -> Path:
    folder = tmp_path / "archive"
    shutil.copytree(synthetic_root / "synthetic" / "test", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder


def test_score_on_ray_writes_the_rows_score_writes_and_a_rerun_skips(tiny_model, inputs, tmp_path):
    plain = run_cli(
        "score", str(inputs), "--model", str(tiny_model), "--out", str(tmp_path / "plain"), "--device", "cpu"
    )
    assert plain.returncode == 2, plain.stderr  # the broken file, reported
    ray_out = tmp_path / "ray"
    first = run_cli(
        "score", str(inputs), "--model", str(tiny_model), "--out", str(ray_out), "--device", "cpu",
        "--ray", "--actors", "1:2", "--batch-size", "8",
    )  # fmt: skip
    assert first.returncode == 2, first.stderr[-3000:]
    assert "rejected [" in first.stderr and "broken.png" in first.stderr
    a = {r["id"]: r for r in read_results(tmp_path / "plain").to_pylist()}
    b = {r["id"]: r for r in read_results(ray_out).to_pylist()}
    assert sorted(a) == sorted(b) and len(a) == len(list(inputs.rglob("*.png"))) - 1
    for ident, row in a.items():
        assert b[ident]["score"] == pytest.approx(row["score"], rel=1e-4, abs=1e-6)
        assert b[ident]["is_anomaly"] == row["is_anomaly"] and b[ident]["worker"] == "ray"
    parts = sorted(ray_out.rglob("*.parquet"))

    again = run_cli(
        "score", str(inputs), "--model", str(tiny_model), "--out", str(ray_out), "--device", "cpu", "--ray",
    )  # fmt: skip
    assert "skipped" in again.stdout, again.stdout + again.stderr[-2000:]
    assert sorted(ray_out.rglob("*.parquet")) == parts  # nothing scored twice


def test_score_on_ray_refuses_what_it_cannot_do(tiny_model, inputs, tmp_path):
    bad = run_cli(
        "score", str(inputs), "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--ray", "--actors", "3:1"
    )
    assert bad.returncode == 2 and "MIN:MAX" in bad.stderr
    kept = run_cli(
        "score", str(inputs), "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--ray",
        "--keep-images", str(tmp_path / "keep"),
    )  # fmt: skip
    assert kept.returncode == 2 and "not available with --ray" in kept.stderr


def test_score_on_ray_reads_an_object_store(tiny_model, synthetic_root, tmp_path):
    from s3_server import HAS_MOTO, S3Server

    if not HAS_MOTO:
        pytest.skip("moto_server not installed (make install puts it in .venv)")
    with S3Server() as s3:
        fs = s3.filesystem()
        images = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:6]
        for i, path in enumerate(images):
            with fs.open_output_stream(f"ear-payloads/archive/day-1/{i:02d}.png") as f:
                f.write(path.read_bytes())
        out = tmp_path / "out"
        done = run_cli(
            "score", s3.store_uri("archive"), "--model", str(tiny_model), "--out", str(out), "--device", "cpu",
            "--ray", "--actors", "1:1",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    ids = sorted(read_results(out)["id"].to_pylist())
    assert ids == [f"s3://ear-payloads/archive/day-1/{i:02d}.png" for i in range(6)]  # no credentials, no query


def test_ray_takes_only_an_address_as_its_value(tmp_path):
    from ear_stream.cli.batch import _is_ray_address

    assert all(map(_is_ray_address, ["local", "auto", "ray://head:10001", "10.0.0.5:6379"]))
    assert not any(map(_is_ray_address, ["s3://bucket/x", str(tmp_path), "images/", "a/b:c"]))
