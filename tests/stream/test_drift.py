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
from ear_stream.stream.drift import DriftMonitor
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
