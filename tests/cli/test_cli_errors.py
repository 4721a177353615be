"""Expected failures of the CLI end in one ``Error:`` line with the fix and a non-zero status, never a traceback.

Each case runs the real command in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import needs_redis

from ear_stream.stream.redis_server import free_port


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ear_stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_error_line(proc: subprocess.CompletedProcess, status: int = 1) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_missing_redis_server_for_the_demo(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    line = one_error_line(run_cli("demo", "--workdir", str(tmp_path / "demo"), env={"PATH": str(bare)}))
    assert "redis-server not found" in line and "make redis" in line


def test_unreachable_redis_url():
    line = one_error_line(run_cli("status", "--redis", f"redis://127.0.0.1:{free_port()}/0"))
    assert "cannot reach Redis at redis://127.0.0.1:" in line and "--redis" in line


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    port = free_port()
    work = tmp_path_factory.mktemp("redis-auth")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "s3cret",
            "--save",
            "",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("credentials", [":wrong@", ""], ids=["wrong-password", "no-password"])
def test_refused_redis_credentials(redis_with_password, credentials):
    url = f"redis://{credentials}127.0.0.1:{redis_with_password}/0"
    line = one_error_line(run_cli("status", "--redis", url))
    assert "redis://:PASSWORD@host:port/0" in line and "wrong" not in line.split("(")[0]
    assert "s3cret" not in line


def test_missing_model_directory(tmp_path):
    proc = run_cli("score", str(tmp_path), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    line = one_error_line(proc, status=2)  # click's usage error
    assert "does not exist" in line


def test_weights_that_do_not_match_their_manifest(tiny_model, synthetic_root, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8  # flip the last tensor bytes
    weights.write_bytes(bytes(data))
    image = next((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))
    line = one_error_line(run_cli("score", str(image), "--model", str(model), "--out", str(tmp_path / "out")))
    assert "does not match the hash in its manifest" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_asked_for_but_absent(tiny_model, synthetic_root, tmp_path):
    image = next((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))
    proc = run_cli("score", str(image), "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--device", "cuda")
    line = one_error_line(proc)
    assert "no CUDA device" in line and "--device cpu" in line


@needs_redis
def test_metrics_port_in_use(redis_server, models_dir, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        proc = run_cli(
            "worker", "--redis", redis_server.url, "--models", str(models_dir), "--out", str(tmp_path / "out"),
            "--metrics-port", str(port), "--exit-when-idle", "0.5", "--device", "cpu",
        )  # fmt: skip
        line = one_error_line(proc)
        assert "already in use" in line and "--metrics-port" in line
    finally:
        busy.close()


def test_isolated_build_without_torch_fails_with_the_fix(tmp_path):
    """pip's isolated build has no torch: setup.py must say how to build, not install a package without ops."""
    fake = tmp_path / "site"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('No module named torch (isolated build)')\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "setup.py", "--name"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(fake), "EAR_STREAM_BUILD": "auto"},
        timeout=120,
    )
    assert proc.returncode != 0 and "--no-build-isolation" in proc.stderr
