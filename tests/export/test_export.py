"""ear-stream export: the graph against the pipeline, each format's parity, the consumers that do not import
ear_stream, `score --model EXPORT` and `--runtime`, and every refusal (nothing half-written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import needs_redis

from ear_stream.cli import main
from ear_stream.export.graph import ExportError, GraphOptions, ScoringGraph
from ear_stream.export.writer import (
    SCORE_RTOL_BF16,
    SCORE_RTOL_FP32,
    export_model,
    in_tolerance_band,
    parity_images,
    score_difference,
)
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.io.results import read_results
from ear_stream.model.artifact import ArtifactError
from ear_stream.model.exported import RuntimeMissing, open_exported, read_export_info

REPO = Path(__file__).resolve().parents[2]
CONSUMERS = REPO / "tools" / "export"
AOTI_SCORE = REPO / "build" / "cmake" / "aoti_score"


@pytest.fixture(scope="module")
def headed(headed_models) -> Path:
    """The 64-px spectral model with a learned head (what the default training makes, small)."""
    return headed_models / "synthetic"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Exports made once per (model, format, precision) for the tests of this module."""
    made: dict[tuple[str, str, str], Path] = {}
    root = tmp_path_factory.mktemp("exports")

    def get(model: Path, fmt: str, precision: str = "fp32") -> Path:
        key = (str(model), fmt, precision)
        if key not in made:
            out = root / f"{model.name}-{len(made)}-{fmt}-{precision}"
            export_model(model, fmt, out, precision)
            made[key] = out
        return made[key]

    return get


def _scores_agree(got: np.ndarray, want: np.ndarray, rtol: float, threshold: float) -> None:
    """Scores within rtol, and the verdicts the same except where a score lies within the tolerance band."""
    bf16 = rtol == SCORE_RTOL_BF16  # the bf16 criterion: relative to max(|score|, threshold)
    rel = score_difference(got, want, threshold if bf16 else None)
    assert rel.max() <= rtol, (rel.max(), rtol)
    differ = (got > threshold) != (want > threshold)
    in_band = in_tolerance_band(want, threshold, bf16)
    assert not (differ & ~in_band).any(), (got, want, threshold)


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_graph_is_the_pipeline(headed, tiny_model, fused):
    """The module every format traces computes what the pipeline does (fp32), for odd batches too."""
    for model in (headed, tiny_model):
        pipe = Pipeline.from_artifact(model, device="cpu", precision="fp32")
        graph = ScoringGraph(pipe, GraphOptions(fused=fused)).eval()
        for b in (1, 5):
            images = parity_images(pipe.config.image_size, b, seed=b)
            want = pipe.score_tensor(images, want_maps=True)
            with torch.no_grad():
                score, dmap, recon, ratio = graph(images)
            np.testing.assert_allclose(score.numpy(), want.scores, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(ratio.numpy(), want.mask_ratio, rtol=1e-6)
            assert want.maps is not None
            torch.testing.assert_close(dmap, want.maps, rtol=1e-4, atol=1e-5)
            assert recon.shape == images.shape


@pytest.mark.parametrize(
    ("fmt", "precision", "rtol"),
    [
        ("onnx", "fp32", SCORE_RTOL_FP32),
        ("openvino", "fp32", SCORE_RTOL_FP32),
        ("openvino", "bf16", SCORE_RTOL_BF16),
        ("aoti", "fp32", SCORE_RTOL_FP32),
        ("aoti", "bf16", SCORE_RTOL_BF16),
    ],
)
def test_parity_per_format(headed, exports, fmt, precision, rtol):
    """Every format, each precision path forced: scores within the stated tolerance of the torch pipeline on
    the same path, verdicts identical outside the tolerance band, maps close; any batch size (1, 7)."""
    out = exports(headed, fmt, precision)
    info = read_export_info(out)
    assert info.format == fmt and info.image_size == 64 and info.files["manifest.json"]
    assert info.tolerance["measured_score_rel_diff"] <= info.tolerance["score_rtol"]
    torch_pipe = Pipeline.from_artifact(headed, device="cpu", precision=precision)
    exported = Pipeline.from_artifact(out, device="cpu", precision=precision)
    assert exported.runtime is not None and exported.model_version == torch_pipe.model_version
    for b in (1, 7):
        images = parity_images(64, b, seed=10 + b)
        want = torch_pipe.score_tensor(images, want_maps=True)
        got = exported.score_tensor(images, want_maps=True)
        _scores_agree(got.scores, want.scores, rtol, torch_pipe.threshold)
        assert got.maps is not None and want.maps is not None
        map_tol = 1e-3 if precision == "fp32" else 0.1
        assert float((got.maps - want.maps).abs().max()) <= map_tol
    empty = exported.score_tensor(torch.zeros((0, 3, 64, 64)))
    assert empty.scores.shape == (0,)


def test_plain_model_onnx(tiny_model, exports):
    """A model without saliency or head (the MSGMS max alone) exports too."""
    out = exports(tiny_model, "onnx")
    pipe = Pipeline.from_artifact(tiny_model, device="cpu", precision="fp32")
    images = parity_images(64, 3, seed=3)
    _scores_agree(Pipeline.from_export(out).score_tensor(images).scores, pipe.score_tensor(images).scores,
                  SCORE_RTOL_FP32, pipe.threshold)  # fmt: skip


def test_score_on_an_export_writes_the_same_rows(headed, exports, synthetic_root, tmp_path):
    """`ear-stream score --model EXPORT_DIR`: the same ids, scores (within tolerance), verdicts, regions
    and product as the torch model's rows; the product defaults to the exported model's name."""
    images = str(synthetic_root / "synthetic" / "test")
    runner = CliRunner()
    ref = runner.invoke(
        main, ["score", images, "--model", str(headed), "--out", str(tmp_path / "a"), "--precision", "fp32"]
    )
    assert ref.exit_code == 0, ref.output
    got = runner.invoke(main, ["score", images, "--model", str(exports(headed, "onnx")), "--out", str(tmp_path / "b"),
                               "--timings"])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "runtime: onnx (fp32)" in got.output and "graph" in got.output and "start-up" in got.output
    a = read_results(tmp_path / "a").to_pandas().sort_values("id").reset_index(drop=True)
    b = read_results(tmp_path / "b").to_pandas().sort_values("id").reset_index(drop=True)
    assert list(a["id"]) == list(b["id"]) and set(a["product"]) == set(b["product"]) == {"synthetic"}
    assert set(a.columns) == set(b.columns)
    _scores_agree(b.score.to_numpy(), a.score.to_numpy(), SCORE_RTOL_FP32, float(a.threshold[0]))
    assert (a.model_version == b.model_version).all()


def test_runtime_option_exports_once_and_reuses(headed, synthetic_root, tmp_path, monkeypatch):
    """`score --runtime openvino` exports into the cache on first use, reuses it after, and follows the
    model's current threshold (a revision after the export)."""
    monkeypatch.setenv("EAR_STREAM_EXPORT_CACHE", str(tmp_path / "cache"))
    images = str(synthetic_root / "synthetic" / "test" / "good")
    runner = CliRunner()
    for run in ("first", "second"):
        res = runner.invoke(main, ["score", images, "--model", str(headed), "--out", str(tmp_path / run),
                                   "--runtime", "openvino", "--precision", "fp32"])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "runtime: openvino" in res.output
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1
    res = runner.invoke(main, ["score", images, "--model", str(headed), "--out", str(tmp_path / "c"),
                               "--runtime", "onnx", "--compile"])  # fmt: skip
    assert res.exit_code == 2 and "--compile" in res.output


@needs_redis
def test_a_worker_scores_through_an_export(headed, redis_server, synthetic_root, tmp_path, monkeypatch):
    """`worker --runtime onnx` on a real redis-server: every pushed entry becomes a row, scored by the graph
    exported into the cache on the model's first use, with the torch pipeline's scores and verdicts."""
    from ear_stream.io.decode import decode_image
    from ear_stream.stream import queue as q
    from ear_stream.stream.worker import Worker, WorkerConfig

    monkeypatch.setenv("EAR_STREAM_EXPORT_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "models"
    models.mkdir()
    (models / "synthetic").symlink_to(headed, target_is_directory=True)
    paths = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[::5][:10]
    stream = q.StreamConfig(stream="exp:in", group="g", dlq="exp:dlq", results="exp:out", claim_idle_ms=300)
    client = q.connect(redis_server.url)
    for i, path in enumerate(paths):
        q.push(client, "synthetic", path.read_bytes(), f"img-{i}", None, stream)
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=models, out_dir=tmp_path / "out", stream=stream,
                       device="cpu", precision="fp32", runtime="onnx", batch_size=4, flush_seconds=0.2, block_ms=50,
                       exit_when_idle_s=0.5)  # fmt: skip
    stats = Worker(cfg).run()
    assert stats["scored"] == len(paths) and client.xlen(stream.dlq) == 0
    rows = read_results(tmp_path / "out").to_pandas().set_index("id")
    pipe = Pipeline.from_artifact(headed, device="cpu", precision="fp32")
    want = pipe.score_arrays([decode_image(p.read_bytes()) for p in paths]).scores
    got = np.array([rows.loc[f"img-{i}", "score"] for i in range(len(paths))])
    _scores_agree(got, np.asarray(want), SCORE_RTOL_FP32, pipe.threshold)
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def _run_without_ear_stream(script: Path, *args: str) -> str:
    """Run a consumer with `import ear_stream` made impossible: it must not need the package."""
    code = (
        "import runpy, sys; sys.modules['ear_stream'] = None; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _parse(stdout: str) -> dict[str, tuple[float, str]]:
    rows = [line.split("\t") for line in stdout.strip().splitlines()]
    return {path: (float(score), verdict) for score, verdict, path in rows}


def _expected(model: Path, paths: list[Path], precision: str = "fp32") -> dict[str, float]:
    pipe = Pipeline.from_artifact(model, device="cpu", precision=precision)
    from ear_stream.io.decode import decode_image

    res = pipe.score_arrays([decode_image(p.read_bytes()) for p in paths])
    return {str(p): float(s) for p, s in zip(paths, res.scores, strict=True)}


@pytest.fixture(scope="module")
def odd_sized_images(synthetic_root, tmp_path_factory) -> list[Path]:
    """A few test images resized to odd, non-square sizes (JPEG and PNG): the consumers resize them."""
    from PIL import Image

    out = tmp_path_factory.mktemp("odd")
    found = sorted((synthetic_root / "synthetic" / "test").rglob("*.png"))[::7][:4]
    paths = []
    for i, src in enumerate(found):
        with Image.open(src) as img:
            dst = out / f"img{i}.{'png' if i % 2 else 'jpg'}"
            img.convert("RGB").resize((97 + 10 * i, 81)).save(dst)
            paths.append(dst)
    return paths


@pytest.mark.parametrize(("fmt", "script"), [("onnx", "onnx_score.py"), ("openvino", "openvino_score.py")])
def test_python_consumers_without_the_package(headed, exports, odd_sized_images, fmt, script):
    """tools/export/*_score.py score odd-sized files like the package does (Pillow's antialiased resize in
    place of torch's: within 2 % of the score), with ear_stream unimportable."""
    got = _parse(_run_without_ear_stream(CONSUMERS / script, str(exports(headed, fmt)), *map(str, odd_sized_images)))
    want = _expected(headed, odd_sized_images)
    assert set(got) == set(want)
    for path, score in want.items():
        assert abs(got[path][0] - score) <= 0.02 * abs(score) + 1e-4, (path, got[path], score)


@pytest.mark.skipif(
    not AOTI_SCORE.is_file(), reason="build/cmake/aoti_score is not built (make cmake-test; libstb-dev)"
)
def test_cpp_aoti_consumer(headed, exports, odd_sized_images):
    """The C++ program loads the AOTI package (torch::inductor::AOTIModelPackageLoader) and prints the scores
    the package gives in Python, for images it decodes itself."""
    out = exports(headed, "aoti", "fp32")
    done = subprocess.run([str(AOTI_SCORE), str(out), *map(str, odd_sized_images)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = _parse(done.stdout)
    want = _expected(headed, odd_sized_images)
    for path, score in want.items():
        assert abs(got[path][0] - score) <= 1e-3 * abs(score) + 1e-5, (path, got[path], score)
    bad = subprocess.run([str(AOTI_SCORE), str(out), str(odd_sized_images[0].parent / "missing.png")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "cannot decode" in bad.stderr


@pytest.mark.skipif(
    not AOTI_SCORE.is_file(), reason="build/cmake/aoti_score is not built (make cmake-test; libstb-dev)"
)
def test_cpp_aoti_consumer_checks_the_hashes(headed, exports, odd_sized_images, tmp_path):
    """A package is native code: the C++ program refuses one whose bytes do not match export.json."""
    tampered = tmp_path / "tampered"
    shutil.copytree(exports(headed, "aoti", "fp32"), tampered)
    with open(tampered / "manifest.json", "a") as f:
        f.write(" ")
    done = subprocess.run([str(AOTI_SCORE), str(tampered), str(odd_sized_images[0])], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1 and "does not match its hash" in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------------ refusals
def test_refusals_leave_nothing(headed, tmp_path, synthetic_root):
    """Not a model, a variant no format expresses, an occupied --out: one line each, nothing written."""
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(synthetic_root), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "not a model directory" in res.output and not (tmp_path / "x").exists()

    two_pass = tmp_path / "two-pass"
    shutil.copytree(headed, two_pass)
    manifest = json.loads((two_pass / "manifest.json").read_text())
    manifest["config"]["saliency"] = "self"
    manifest["config"]["saliency_params"] = {"grid": 16, "light_scale": 4}
    (two_pass / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="first U-Net pass"):
        ScoringGraph(Pipeline.from_artifact(two_pass, device="cpu"))

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    res = runner.invoke(main, ["export", str(headed), "--format", "onnx", "--out", str(occupied)])
    assert res.exit_code == 1 and "--force" in res.output and (occupied / "keep.txt").read_text() == "mine"
    res = runner.invoke(
        main, ["export", str(headed), "--format", "onnx", "--out", str(tmp_path / "y"), "--precision", "bf16"]
    )
    assert res.exit_code == 1 and "fp32" in res.output and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if ".export-" in p.name]  # no staging left behind


def test_force_never_deletes_the_model_or_what_is_not_an_export(headed, exports, tmp_path):
    """--out the model, a folder holding it or inside it, or (with --force) a folder that is no export: refused,
    nothing deleted; an exported directory is no model to export again."""
    models = tmp_path / "models"
    shutil.copytree(headed, models / "tile")
    before = sorted(p.name for p in (models / "tile").iterdir())
    runner = CliRunner()
    for out in (models / "tile", models, models / "tile" / "sub"):
        res = runner.invoke(main, ["export", str(models / "tile"), "--format", "onnx", "--out", str(out), "--force"])
        assert res.exit_code == 1 and "overlaps the model directory" in res.output, res.output
        assert sorted(p.name for p in (models / "tile").iterdir()) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = runner.invoke(main, ["export", str(models / "tile"), "--format", "onnx", "--out", str(mine), "--force"])
    assert res.exit_code == 1 and "not an earlier export" in res.output and (mine / "notes.txt").exists()
    (mine / "export.json").write_text("{}")  # a file of that name does not make a folder an export
    res = runner.invoke(main, ["export", str(models / "tile"), "--format", "onnx", "--out", str(mine), "--force"])
    assert res.exit_code == 1 and "not an earlier export" in res.output and (mine / "notes.txt").exists()
    res = runner.invoke(
        main, ["export", str(exports(headed, "onnx")), "--format", "onnx", "--out", str(tmp_path / "z")]
    )
    assert res.exit_code == 1 and "exported model already" in res.output and not (tmp_path / "z").exists()
    res = runner.invoke(main, ["export", str(headed), "--format", "aoti", "--out", str(tmp_path / "q"),
                               "--precision", "int8"])  # fmt: skip
    assert res.exit_code == 1 and "is not exported" in res.output and not (tmp_path / "q").exists()


def test_a_promoted_products_export_keeps_the_products_name(headed, tmp_path):
    """models/<product> is a link to a version folder once promoted: the export is named after the product."""
    versions = tmp_path / "versions" / "abc123-def456"
    shutil.copytree(headed, versions)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tile").symlink_to(versions, target_is_directory=True)
    report = export_model(tmp_path / "models" / "tile", "onnx", tmp_path / "out")
    assert report.info.product == "tile"


def test_runtime_options_are_refused_at_start(headed, tmp_path):
    """`worker --runtime onnx --compile` (or --device cuda, --tile) stops at start with one line, not later per entry."""
    runner = CliRunner()
    base = ["worker", "--redis", "redis://127.0.0.1:1", "--models", str(tmp_path), "--out", str(tmp_path / "o"),
            "--runtime", "onnx"]  # fmt: skip
    for extra, said in ((["--compile"], "--compile"), (["--tile", "64"], "--tile")):
        res = runner.invoke(main, [*base, *extra])
        assert res.exit_code == 2 and said in res.output, res.output
    import click

    from ear_stream.cli.options import check_runtime_options

    with pytest.raises(click.UsageError, match="on the CPU"):  # (the CLI refuses cuda earlier on a machine without)
        check_runtime_options("onnx", device="cuda")


def test_missing_runtime_is_one_line(headed, tmp_path, monkeypatch):
    """A format whose runtime is not installed names the package to install, before anything is written."""
    import importlib

    real = importlib.import_module

    def no_openvino(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_openvino)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else object())
    res = CliRunner().invoke(main, ["export", str(headed), "--format", "openvino", "--out", str(tmp_path / "ov")])
    assert res.exit_code == 1 and "pip install openvino" in res.output, res.output
    assert not (tmp_path / "ov").exists()
    from ear_stream.model.exported import require_runtime

    with pytest.raises(RuntimeMissing, match="pip install openvino"):
        require_runtime("openvino")


def test_tampered_exports_are_refused(headed, exports, tmp_path):
    """A graph or manifest that does not match export.json's hashes, a hostile export.json: refused."""
    good = exports(headed, "onnx")
    graph = tmp_path / "graph"
    shutil.copytree(good, graph)
    with open(graph / "model.onnx", "r+b") as f:
        f.seek(os.path.getsize(graph / "model.onnx") // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="does not match its hash"):
        open_exported(graph)

    manifest = tmp_path / "manifest"
    shutil.copytree(good, manifest)
    data = json.loads((manifest / "manifest.json").read_text())
    data["threshold"] = 99.0  # a looser threshold slipped in beside the graph
    (manifest / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="does not match its hash"):
        Pipeline.from_artifact(manifest)

    for name, edit in [
        ("escape", lambda d: d["files"].update({"../../etc/passwd": "0" * 64})),
        ("format", lambda d: d.update(format="tensorrt")),
        ("no-graph", lambda d: d.update(files={"manifest.json": d["files"]["manifest.json"]})),
        ("version-type", lambda d: d.update(model_version=7)),
        ("nan-threshold", lambda d: d.update(threshold=float("nan"))),
        ("looser-threshold", lambda d: d.update(threshold=99.0)),  # export.json cannot hash itself: the manifest
        ("size", lambda d: d.update(image_size=0)),
        ("product-type", lambda d: d.update(product=["x"])),
    ]:
        hostile = tmp_path / name
        shutil.copytree(good, hostile)
        data = json.loads((hostile / "export.json").read_text())
        edit(data)
        (hostile / "export.json").write_text(json.dumps(data))
        with pytest.raises(ArtifactError):
            open_exported(hostile)
    ov = exports(headed, "openvino")
    partial = tmp_path / "partial"  # lists model.xml only: model.bin would load unchecked
    shutil.copytree(ov, partial)
    data = json.loads((partial / "export.json").read_text())
    del data["files"]["model.bin"]
    (partial / "export.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="exactly"):
        open_exported(partial)
    linked = tmp_path / "linked"  # a graph that is a link to a file elsewhere (swappable after the hash check)
    shutil.copytree(good, linked)
    (linked / "model.onnx").unlink()
    (linked / "model.onnx").symlink_to(good / "model.onnx")
    with pytest.raises(ArtifactError, match="not a regular file"):
        open_exported(linked)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "export.json").write_text("[1, 2")
    with pytest.raises(ArtifactError, match="not a valid export"):
        Pipeline.from_artifact(tmp_path / "garbage")
