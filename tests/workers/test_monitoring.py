"""The Grafana dashboard and Prometheus alerts in workers/monitoring/ use only metrics the worker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from ear_stream.stream.metrics import WorkerMetrics

MONITORING = Path(__file__).resolve().parents[2] / "workers" / "monitoring"
METRIC = re.compile(r"\b(ear_[a-z_]+)")


def _exported() -> set[str]:
    m = WorkerMetrics("w")
    m.dead_letters("decode_error")
    m.latency.observe(0.1)
    m.stream_length.labels("w", "ear:in").set(1)
    m.score_quantile.labels("w", "p", "50").set(1)
    m.drift_ratio.labels("w", "p").set(1)
    m.drift_shift.labels("w", "p").set(0)
    m.drift_alert.labels("w", "p").set(0)
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ear_")}


def _used() -> dict[str, set[str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = {
        "alerts": [r["expr"] for g in rules["groups"] for r in g["rules"]],
        "dashboard": [t["expr"] for p in dashboard["panels"] for t in p["targets"]],
    }
    return {k: {m for e in v for m in METRIC.findall(e)} for k, v in exprs.items()}


def test_every_metric_a_panel_or_rule_uses_is_exported():
    exported = _exported()
    for where, names in _used().items():
        missing = names - exported
        assert not missing, f"{where} uses metrics the worker does not export: {missing}"


def test_the_dashboard_covers_what_operators_watch():
    used = _used()["dashboard"]
    for needed in ("ear_images_scored_total", "ear_verdict_latency_seconds_bucket", "ear_stream_lag",
                   "ear_stream_pending", "ear_dead_letters_total", "ear_redis_used_memory_bytes", "ear_drift_ratio",
                   "ear_drift_shift", "ear_worker_up"):  # fmt: skip
        assert needed in used


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus package)")
    out = subprocess.run([promtool, "check", "rules", str(MONITORING / "alerts.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 9 rules found" in out.stdout
