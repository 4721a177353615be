"""Fail closed: a NaN/inf reconstruction never passes a part; exact Q3 on constant attention; big boxes."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import torch
from conftest import needs_redis

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.io.results import read_results
from ear_stream.model import ops
from ear_stream.model import reference as ref
from ear_stream.model.artifact import Manifest, load_artifact, save_artifact
from ear_stream.model.config import NON_FINITE_SCORE
from ear_stream.stream import queue as q
from ear_stream.stream.worker import Worker, WorkerConfig

CUDA = torch.cuda.is_available() and ops.extension_has_cuda()
BACKENDS = ["reference", "extension-cpu"] + (["extension-cuda"] if CUDA else [])


def run_msgms(backend: str, images, recon, **kw):
    if backend == "reference":
        return ref.msgms_reference(images, recon, **kw)
    if ops.backend() != "extension":
        pytest.skip(f"extension not built: {ops.extension_error()}")
    dev = "cuda" if backend == "extension-cuda" else "cpu"
    score, dmap = ops.msgms(images.to(dev), recon.to(dev), **kw)
    return score.cpu(), None if dmap is None else dmap.cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("box", [1, 21])
def test_non_finite_reconstruction_gives_a_nan_score(backend, bad, box):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 40, 52)
    recon = images.clone()
    recon[1, :, 17:21, 30:34] = bad  # a patch of image 1 only (a single pixel would be removed by the median)
    score, _ = run_msgms(backend, images, recon, scales=3, box=box)
    assert torch.isnan(score[1]), score
    assert torch.isfinite(score[[0, 2]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_zero_and_all_negative_maps_are_not_lost(backend):
    """The max of a map that is -0.0 everywhere is -0.0 or 0.0, never the -inf the atomic max starts from."""
    images = torch.full((2, 1, 16, 16), 0.5)
    score, _ = run_msgms(backend, images, images.clone(), scales=1, box=1, median=False)
    assert torch.isfinite(score).all() and (score.abs() < 1e-6).all()


@pytest.mark.parametrize("backend", ["extension-cpu"] + (["extension-cuda"] if CUDA else []))
@pytest.mark.parametrize("value", [0.0, 0.1, 1 / 3, 7.25, -2.0])
def test_constant_attention_excises_nothing_on_every_backend(backend, value):
    """std = 0: threshold == A everywhere, S = A > threshold is empty (the rule in reference.q3_threshold)."""
    if ops.backend() != "extension":
        pytest.skip(f"extension not built: {ops.extension_error()}")
    dev = "cuda" if backend == "extension-cuda" else "cpu"
    images = torch.rand(2, 3, 37, 45)
    att = torch.full((2, 28, 28), value)
    want, want_ratio = ref.excise_reference(images, att, 8)
    got, ratio = ops.excise(images.to(dev), att.to(dev), 8)
    assert float(want_ratio.max()) == 0.0 and float(ratio.max()) == 0.0
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("box", [131, 151])
def test_boxes_larger_than_the_cuda_tile_work_everywhere(backend, box):
    torch.manual_seed(1)
    images, recon = torch.rand(2, 3, 160, 170), torch.rand(2, 3, 160, 170)
    want, want_map = ref.msgms_reference(images, recon, box=box, want_map=True)
    got, got_map = run_msgms(backend, images, recon, box=box, want_map=True)
    # a float sum of box² ≈ 23,000 terms per pixel: rounding grows with the box, so the map gets 5e-5
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    torch.testing.assert_close(got_map, want_map, rtol=0, atol=5e-5)
    assert box > ops.MAX_CUDA_BOX


def test_missing_kernel_image_falls_back_to_the_reference_once():
    def no_image():
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    ops._REFERENCE_DEVICES.discard(7)
    assert ops._guarded(no_image, torch.device("cuda", 7)) is None
    assert 7 in ops._REFERENCE_DEVICES
    ops._REFERENCE_DEVICES.discard(7)
    with pytest.raises(RuntimeError, match="no kernel image"):  # on the CPU it is a real error
        ops._guarded(no_image, torch.device("cpu"))

    def other():
        raise RuntimeError("other failure")

    with pytest.raises(RuntimeError, match="other"):
        ops._guarded(other, torch.device("cuda", 0))


def test_backend_is_described():
    """The description names what actually runs: the extension when it loaded, else the reference and why."""
    desc = ops.backend_description()
    if ops.backend() == "extension":
        assert desc.startswith("extension (cpu") and ("cuda" in desc) == ops.extension_has_cuda()
    else:
        assert desc == f"reference ({ops.extension_error()})"


# ----------------------------------------------------------------------------- a diverged model
@pytest.fixture(scope="module")
def nan_model(tiny_model, tmp_path_factory):
    """The tiny model with a NaN in its output layer: every reconstruction is NaN."""
    unet, manifest = load_artifact(tiny_model)
    with torch.no_grad():
        unet.head.bias.fill_(float("nan"))
    out = tmp_path_factory.mktemp("nanmodels") / "synthetic"
    fresh = Manifest(config=manifest.config, threshold=manifest.threshold, calibration=manifest.calibration)
    return save_artifact(out, unet, fresh)


def test_pipeline_marks_non_finite_scores_anomalous(nan_model):
    pipe = Pipeline.from_artifact(nan_model, device="cpu")
    res = pipe.score_tensor(torch.rand(3, 3, 64, 64))
    assert not res.finite.any() and res.is_anomaly.all()  # never a pass


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ear_stream.cli", *args], capture_output=True, text=True, timeout=300)


def test_score_lists_non_finite_images_as_failures(nan_model, synthetic_root, tmp_path):
    files = sorted((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))[:2]
    proc = _cli("score", *map(str, files), "--model", str(nan_model), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(NON_FINITE_SCORE) == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or read_results(tmp_path / "out").num_rows == 0


def test_eval_refuses_an_auroc_over_non_finite_scores(nan_model, synthetic_root):
    proc = _cli("eval", str(synthetic_root), "--category", "synthetic", "--model", str(nan_model), "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "scored NaN/inf" in proc.stderr and "AUROC" not in proc.stdout


@needs_redis
def test_worker_dead_letters_non_finite_scores(nan_model, redis_server, synthetic_root, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "synthetic").symlink_to(nan_model, target_is_directory=True)
    tag = uuid.uuid4().hex[:8]
    scfg = q.StreamConfig(stream=f"t:{tag}:in", group="g", dlq=f"t:{tag}:dlq", results=f"t:{tag}:out")
    client = q.connect(redis_server.url)
    files = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[:5]
    for i, f in enumerate(files):
        q.push(client, "synthetic", f.read_bytes(), f"nan-{i}", None, scfg)
    cfg = WorkerConfig(
        redis_url=redis_server.url,
        models_dir=models,
        out_dir=tmp_path / "out",
        stream=scfg,
        device="cpu",
        flush_seconds=0.2,
        block_ms=100,
        exit_when_idle_s=0.5,
    )
    stats = Worker(cfg).run()
    assert stats["scored"] == 0 and stats["dead_letters"] == 5
    dlq = client.xrange(scfg.dlq)
    assert [e[1][b"reason"].decode() for e in dlq] == [NON_FINITE_SCORE] * 5
    assert {e[1][b"orig_id"].decode() for e in dlq} == {f"nan-{i}" for i in range(5)}
    assert q.backlog(client, scfg) == (0, 0)  # nothing pending, nothing lost
    assert client.xlen(scfg.results) == 0  # no verdict was published for them
    assert not (tmp_path / "out").exists() or read_results(tmp_path / "out").num_rows == 0
