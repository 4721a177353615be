"""Drift: a stream whose images get brighter moves the good-side scores away from the calibration."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_redis
from PIL import Image
from prometheus_client import generate_latest

from ear_stream.cli import main
from ear_stream.io.results import read_results, summarize_over_time
from ear_stream.stream import queue as q
from ear_stream.stream.drift import DriftMonitor, describe_drift
from ear_stream.stream.worker import Worker, WorkerConfig


def test_drift_ratio_by_hand():
    d = DriftMonitor(window=30, alert=1.5)
    calib = {"p50": 1.0, "p95": 2.0}
    d.observe("p", np.full(10, 1.0), threshold=5.0, calibration=calib)
    assert "ratio" not in d.report("p")  # too few scores to say anything
    d.observe("p", np.r_[np.full(20, 1.0), [9.0, np.nan]], threshold=5.0, calibration=calib)  # 9.0: a defect
    rep = d.report("p")
    assert rep["n"] == 30 and rep["ratio"] == pytest.approx(1.0) and rep["alert"] is False
    d.observe("p", np.full(30, 3.2), threshold=5.0, calibration=calib)  # the window now holds only these
    rep = d.report("p")
    assert rep["ratio"] == pytest.approx(3.2) and rep["alert"] is True


def _png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@needs_redis
def test_a_brightening_line_raises_the_drift_alert(redis_server, models_dir, synthetic_root, stream_cfg, tmp_path):
    goods = sorted((synthetic_root / "synthetic" / "train" / "good").glob("*.png"))
    grays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in goods]
    client = q.connect(redis_server.url)
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=models_dir, out_dir=tmp_path / "out",
                       stream=stream_cfg, device="cpu", batch_size=8, flush_seconds=0.2, block_ms=100,
                       exit_when_idle_s=0.5, name="drifty", threshold=1e9, drift_window=32, drift_alert=1.2)  # fmt: skip

    def run(gains) -> dict:  # type: ignore[no-untyped-def]
        for i, gain in enumerate(gains):
            q.push(client, "synthetic", _png(grays[i % len(grays)] * gain), f"g{gain:.3f}-{i}", {}, stream_cfg)
        w = Worker(cfg)
        w.run()
        scraped = generate_latest(w.metrics.registry).decode()
        beat = q.stream_status(client, stream_cfg)["workers"]["drifty"]
        return {"report": json.loads(beat["drift"])["synthetic"], "metrics": scraped}

    steady = run([1.0] * 32)
    assert steady["report"]["ratio"] < 1.2 and steady["report"]["alert"] is False
    brighter = run(list(np.linspace(1.5, 2.2, 32)))  # the line's lighting creeps up
    rep = brighter["report"]
    assert rep["ratio"] >= 1.2 and rep["alert"] is True and rep["p50"] > steady["report"]["p50"]
    assert 'ear_drift_ratio{product="synthetic",worker="drifty"}' in brighter["metrics"]
    assert 'ear_score_quantile{product="synthetic",q="50",worker="drifty"}' in brighter["metrics"]
    res = CliRunner().invoke(main, ["status", "--redis", redis_server.url, "--stream", stream_cfg.stream,
                                    "--group", stream_cfg.group])  # fmt: skip
    assert "drift synthetic" in res.output and "ALERT" in res.output, res.output
    verdicts = client.xrange(stream_cfg.results, count=5)
    assert verdicts and all({b"n_regions", b"largest_box"} <= set(fields) for _, fields in verdicts)
    rows = summarize_over_time(read_results(tmp_path / "out"), "minute")
    assert sum(r["count"] for r in rows) == 64
    res = CliRunner().invoke(main, ["results", str(tmp_path / "out"), "--by", "hour"])
    assert res.exit_code == 0 and "by hour:" in res.output, res.output


def _calibration(rng: np.random.Generator, n: int = 50) -> dict:
    """Held-out good images as a manifest keeps them: heavy-tailed scores (1e-4 … 0.3, like Magnetic Tile's)
    and the image statistics of the out-of-distribution check."""
    from ear_stream.inspect.ood import FEATURES, OODCheck

    held = rng.lognormal(-5.5, 2.0, n)
    return {
        "n": n,
        "scores": held.tolist(),
        "p50": float(np.quantile(held, 0.5)),
        "p95": float(np.quantile(held, 0.95)),
        "ood": OODCheck.fit(rng.normal(0.0, 1.0, (n, len(FEATURES)))).to_json(),
    }


def _stream(monitor: DriftMonitor, rng: np.random.Generator, calib: dict, n: int, gain=1.0, shift=0.0) -> list[dict]:
    from ear_stream.inspect.ood import FEATURES

    reports = []
    for _ in range(0, n, 16):
        scores = rng.lognormal(-5.5, 2.0, 16) * gain
        features = rng.normal(shift, 1.0, (16, len(FEATURES)))
        monitor.observe("p", scores, np.inf, calib, features)
        reports.append(monitor.report("p"))
    return reports


def test_the_products_own_images_never_raise_the_alert():
    """The bare score ratio passes 1.5 by chance on heavy-tailed scores; the alert (input shift) does not."""
    rng = np.random.default_rng(7)
    calib = _calibration(rng)
    bare_ratio_passed = alerted = 0
    for _ in range(40):
        reports = _stream(DriftMonitor(), rng, calib, 600)
        bare_ratio_passed += any(r.get("ratio", 0) >= 1.5 for r in reports)
        alerted += any(r.get("alert") for r in reports)
        # the bound is 1.0 spreads and 4 standard errors of the two medians: own images stay well inside it
        assert max(r["shift"] / max(r["shift_level"], r["shift_needed"]) for r in reports if "shift" in r) < 0.8
    assert alerted == 0 and bare_ratio_passed >= 5


def test_shifted_inputs_raise_the_alert_and_scores_alone_do_not():
    rng = np.random.default_rng(8)
    calib = _calibration(rng)
    brighter = _stream(DriftMonitor(), rng, calib, 200, shift=1.5)[-1]  # every frame's statistics moved
    assert brighter["alert"] and brighter["alert_on"] == ["inputs"] and brighter["shift"] >= 1.2
    assert brighter["shift_feature"] and "inputs:" in describe_drift(brighter)
    scores_only = _stream(DriftMonitor(), rng, calib, 200, gain=4.0)[-1]  # reported, not alerting
    assert scores_only["ratio"] >= 1.5 and not scores_only["alert"] and "scores: " in describe_drift(scores_only)
    small = _calibration(rng, n=5)  # five held-out images: their median is itself uncertain, the bound grows
    assert _stream(DriftMonitor(), rng, small, 200)[-1]["shift_needed"] > 2.0
    older = {k: v for k, v in calib.items() if k != "ood"}  # a model calibrated before the statistics: the ratio
    assert _stream(DriftMonitor(), rng, older, 200, gain=4.0)[-1]["alert_on"] == ["scores"]
