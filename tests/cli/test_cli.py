"""The ``ear-stream`` verbs end to end, and the Parquet schema of docs/design.md."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from ear_stream.cli import main
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.thresholds import held_out_images, image_threshold, parse_policy
from ear_stream.io.results import SCHEMA, read_results
from ear_stream.model.artifact import load_manifest


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _commands():
    """Every verb, sub-verbs included (dlq list/replay/purge, …), as (path, click command)."""
    import click

    todo = [((), main)]
    while todo:
        path, cmd = todo.pop()
        yield path, cmd
        if isinstance(cmd, click.Group):
            todo += [((*path, name), sub) for name, sub in cmd.commands.items()]


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p) or "ear-stream")
def test_help_explains_every_flag(path):
    """Every option of every verb has help text, and its --help shows it."""
    import click

    cmd = dict(_commands())[path]
    out = run(*path, "--help").output
    assert "Usage" in out and (cmd.help or "").split("\n")[0][:30] in " ".join(out.split())
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
            assert param.opts[0] in out


#: the configs whose fields a verb's options fill: an option named after a field must show its default
CONFIGS_OF_VERB = {
    "train": ("TrainConfig", "ModelConfig"),
    "worker": ("StreamConfig", "WorkerConfig"),
    "cluster": ("StreamConfig", "WorkerConfig", "ScalingPolicy"),
    "review": ("ReviewConfig",),
}
#: options whose default is a choice made at run time, not a value: auto saliency (DINO when weights are
#: configured, else a weight-free one) and the estimated mosaic scale
RESOLVED_AT_RUN_TIME = {("train", "saliency"), ("train", "mosaic_scale")}


def _shown_default(option):  # type: ignore[no-untyped-def]
    """What an option's default means: click leaves flags and multiple options unset (False, ())."""
    import click

    if option.default is click.core.UNSET:
        return False if option.is_flag else () if option.multiple else None
    return option.default


def test_defaults_shown_are_the_dataclass_defaults_and_worker_equals_cluster():
    import dataclasses

    from ear_stream_workers.policy import DEFAULT_POLL_S, ScalingPolicy

    from ear_stream.model.config import ModelConfig, TrainConfig
    from ear_stream.review.config import ReviewConfig
    from ear_stream.stream.protocol import StreamConfig
    from ear_stream.stream.settings import WorkerConfig

    configs = (ModelConfig, TrainConfig, StreamConfig, WorkerConfig, ReviewConfig, ScalingPolicy)
    classes = {c.__name__: c for c in configs}
    commands = dict(_commands())
    checked = set()
    for verb, names in CONFIGS_OF_VERB.items():
        for option in commands[(verb,)].params:
            fields = [f for n in names for f in dataclasses.fields(classes[n]) if f.name == option.name]
            if not fields or (verb, option.name) in RESOLVED_AT_RUN_TIME or _shown_default(option) is None:
                continue
            field = fields[0]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
            assert str(_shown_default(option)) == str(default), (verb, option.name, option.default, default)
            checked.add((verb, option.name))
    assert len(checked) >= 40  # the check sees the options, not an empty list
    scaling = {"min_workers", "max_workers", "high_watermark", "scale_down_cooldown_s"}  # --cooldown
    assert {("cluster", name) for name in scaling} <= checked
    cluster_params = {p.name: p for p in commands[("cluster",)].params}
    assert cluster_params["poll"].default == DEFAULT_POLL_S  # the supervisor's poll_s default too
    # cluster takes every worker option but the two of one process: its name, and leaving when idle (README)
    worker = {p.name: p.default for p in commands[("worker",)].params}
    cluster = {name: p.default for name, p in cluster_params.items()}
    shared = set(worker) - {"name", "exit_when_idle"}
    assert {"metrics_port", "metrics_host"} <= shared
    assert shared <= set(cluster), shared - set(cluster)
    assert all(worker[k] == cluster[k] for k in shared)


def test_help_imports_no_heavy_library_and_is_fast():
    import subprocess
    import sys
    import time

    code = "import sys, ear_stream.cli as c; print(sorted(m for m in ('torch', 'redis', 'sklearn', 'ray') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ear_stream.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - started < 1.5  # < 0.5 s of our own on a quiet machine; interpreter start included


def test_train_eval_score_results(synthetic_root, tmp_path):
    model = tmp_path / "model"
    res = run(
        "train",
        str(synthetic_root),
        "--category",
        "synthetic",
        "--out",
        str(model),
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--width",
        "8",
        "--max-steps",
        "2",
        "--mosaic-scale",
        "8",
    )
    assert "model written" in res.output and "saliency spectral" in res.output
    assert "saliency: spectral (--saliency auto: no DINO weights configured)" in res.stderr
    assert json.loads((model / "manifest.json").read_text())["config"]["saliency"] == "spectral"

    report, metrics = tmp_path / "report.html", tmp_path / "metrics.json"
    run(
        "eval",
        str(synthetic_root),
        "--category",
        "synthetic",
        "--model",
        str(model),
        "--report",
        str(report),
        "--json",
        str(metrics),
    )
    data = json.loads(metrics.read_text())
    assert {"image_auroc", "pixel_auroc", "n_good", "n_defect", "per_defect"} <= set(data)
    assert data["n_good"] == 6 and data["n_defect"] == 10
    assert "Worst false positives" in report.read_text() and report.with_suffix(".roc.png").stat().st_size > 0
    assert "excised mask S" in report.read_text()
    text = report.read_text()
    assert "Scores of good and defective images" in text and "defect regions" in text and "AUPRO@0.3" in text
    data = json.loads(metrics.read_text())
    for key in ("image_f1_max", "false_reject_rate", "escape_rate", "pixel_f1_max", "aupro_30"):
        assert key in data and 0.0 <= data[key] <= 1.0, key
    assert data["threshold"] == json.loads((model / "manifest.json").read_text())["threshold"]

    # overriding the scoring recalibrates the threshold for it (the stored one belongs to the model's own
    # scoring), from the same held-out good images and policy; the model directory is left as it was
    stored = (model / "manifest.json").read_text()
    res = run("eval", str(synthetic_root), "--category", "synthetic", "--model", str(model), "--box", "1",
              "--json", str(metrics))  # fmt: skip
    assert "threshold recalibrated" in res.stderr and (model / "manifest.json").read_text() == stored
    pipe = Pipeline.from_artifact(model, device="cpu")
    pipe.config.scoring = dataclasses.replace(pipe.config.scoring, box=1)
    manifest = load_manifest(model)
    held_scores, _ = pipe.score_batches(held_out_images(manifest, synthetic_root), 16)
    expected = image_threshold(parse_policy(manifest.threshold_policy), held_scores)
    assert json.loads(metrics.read_text())["threshold"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(manifest.threshold, rel=1e-6)  # box 1 scores differ: so does the threshold

    out = tmp_path / "results"
    test_dir = synthetic_root / "synthetic" / "test"
    run(
        "score",
        str(test_dir / "good"),
        str(test_dir / "blob" / "*.png"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--product",
        "widget",
        "--save-maps",
        str(tmp_path / "maps"),
    )
    assert len(list((tmp_path / "maps").glob("*_map.png"))) == 11
    summary = json.loads(run("results", str(out), "--json").output)
    assert summary["rows"] == 11 and summary["products"]["widget"]["count"] == 11

    # scoring the same files again duplicates ids in the raw files but not in the summary
    run("score", str(test_dir / "good"), "--model", str(model), "--out", str(out), "--product", "widget")
    summary = json.loads(run("results", str(out), "--json").output)
    assert summary["rows"] == 11 and summary["duplicates_dropped"] == 6


def test_parquet_schema_and_hive_layout(tiny_model, synthetic_root, tmp_path):
    out = tmp_path / "results"
    run("score", str(synthetic_root / "synthetic" / "test" / "good"), "--model", str(tiny_model), "--out", str(out))
    parts = list(out.glob("product=synthetic/date=*/part-cli-*.parquet"))
    assert parts and not list(out.rglob("*.tmp"))
    table = read_results(out)
    assert table.schema == SCHEMA
    assert table.schema.field("score").type == pa.float32()
    assert str(table.schema.field("processed_at").type) == "timestamp[ms, tz=UTC]"
    row = table.slice(0, 1).to_pylist()[0]
    assert row["normalized_score"] == pytest.approx(row["score"] / row["threshold"], rel=1e-5)
    assert row["mosaic_scale"] == 8 and len(row["model_version"]) == 19  # <weights 12>-<config 6>
    hive = ds.dataset(out, format="parquet", partitioning="hive").to_table()  # readable as a hive dataset
    assert hive.num_rows == table.num_rows and "date" in hive.column_names


def test_train_riad_baseline_from_the_cli(synthetic_root, tmp_path):
    res = run(
        "train",
        str(synthetic_root),
        "--category",
        "synthetic",
        "--out",
        str(tmp_path / "riad"),
        "--image-size",
        "64",
        "--width",
        "4",
        "--max-steps",
        "1",
        "--method",
        "riad",
    )
    assert "No DINO weights" not in res.stderr
    assert json.loads((tmp_path / "riad" / "manifest.json").read_text())["config"]["method"] == "riad"


def test_corrupt_input_is_reported_not_fatal(tiny_model, synthetic_root, tmp_path):
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = synthetic_root / "synthetic" / "test" / "good" / "0000.png"
    res = run("score", str(bad), str(good), "--model", str(tiny_model), "--out", str(tmp_path / "r"), ok=False)
    assert res.exit_code == 2
    assert "rejected [decode_error]" in res.stderr and "broken.png" in res.stderr
    assert read_results(tmp_path / "r").num_rows == 1


def test_clear_errors_for_bad_arguments(synthetic_root, tmp_path):
    res = run("train", str(synthetic_root), "--category", "nope", "--out", str(tmp_path / "m"), ok=False)
    assert res.exit_code != 0 and "not an MVTec-AD-layout category" in res.output
    res = run(
        "train",
        str(synthetic_root),
        "--category",
        "synthetic",
        "--out",
        str(tmp_path / "m"),
        "--mosaic-scale",
        "big",
        ok=False,
    )
    assert res.exit_code == 2 and "auto" in res.output
    res = run(
        "train",
        str(synthetic_root),
        "--category",
        "synthetic",
        "--out",
        str(tmp_path / "m"),
        "--saliency",
        "dino",
        ok=False,
    )
    assert res.exit_code != 0 and "needs DINO" in res.output


def test_results_to_a_filesystem_uri(tiny_model, tmp_path):
    """Object-store style output goes through pyarrow filesystems (file:// here, s3:// or gs:// in production)."""
    from ear_stream.io.results import ResultWriter, now_utc

    uri = f"file://{tmp_path / 'bucket'}"
    writer = ResultWriter(uri, "w1")
    row = {"id": "a", "product": "p", "score": 0.5, "processed_at": now_utc(), "is_anomaly": False}
    paths = writer.write([row, {**row, "id": "b"}])
    assert len(paths) == 1 and "product=p/date=" in str(paths[0])
    table = read_results(uri)
    assert sorted(table["id"].to_pylist()) == ["a", "b"]
