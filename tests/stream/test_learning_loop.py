"""The loop a line runs (issue 29), end to end on a real redis-server: a worker scores and keeps the images,
a person labels through the review station's HTTP API, ``refine`` learns from the kept images, the worker
shadow-scores the candidate, ``promote`` swaps it in and the running worker's verdicts come from it."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from conftest import needs_redis

from ear_stream.cli import main
from ear_stream.io.results import read_results
from ear_stream.model.artifact import load_manifest
from ear_stream.model.deployment import candidate_dir
from ear_stream.stream import queue as q
from ear_stream.stream.worker import Worker, WorkerConfig

PRODUCT = "synthetic"


def call(url: str, body: dict | None = None, headers: dict | None = None):  # type: ignore[no-untyped-def]
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})  # noqa: S310 - a loopback test server
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a loopback test server
        return response.status, json.loads(response.read())


def wait_rows(out: Path, n: int, timeout: float = 90.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and any(out.rglob("part-*.parquet")):
            rows = read_results(out).to_pylist()
            if len(rows) >= n:
                return rows
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} rows in {out} after {timeout}s")


@needs_redis
def test_keep_label_refine_shadow_promote_and_the_verdict_changes(redis_server, headed_models, stream_cfg, synthetic_root, tmp_path):  # fmt: skip
    from ear_stream.review.config import ReviewConfig
    from ear_stream.review.serve import BackgroundStation
    from ear_stream.stream.redis_server import free_port

    line = tmp_path / "models"
    shutil.copytree(headed_models, line)
    parent = load_manifest(line / PRODUCT).model_version
    from ear_stream.io.datasets import write_synthetic_category

    # more test images than the shared sample: promote wants at least 3 held-out defects and goods
    sample = write_synthetic_category(tmp_path / "sample", PRODUCT, n_train=2, n_test_good=16, n_test_defect=8, seed=3)
    files = sorted((sample / "test").rglob("*.png"))
    truth = {f"{p.parent.name}-{p.stem}": p.parent.name != "good" for p in files}
    payload = {f"{p.parent.name}-{p.stem}": p.read_bytes() for p in files}
    client = q.connect(redis_server.url)
    out, keep = tmp_path / "results", tmp_path / "kept"
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=line, out_dir=out, stream=stream_cfg, device="cpu",
                       precision="fp32", batch_size=8, flush_rows=4, flush_seconds=0.2, block_ms=100,
                       claim_every_s=0.2, reload_every_s=0.2, keep_images=str(keep), keep_passed=1.0,
                       shadow=True)  # fmt: skip
    worker = Worker(cfg)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # 1. the line scores and keeps every image (keep_passed 1.0: the passed sample is everything)
        for ident, data in payload.items():
            q.push(client, PRODUCT, data, ident, None, stream_cfg)
        first = wait_rows(out, len(payload))
        assert all(r["image_uri"] for r in first) and {r["model_version"] for r in first} == {parent}
        assert all(r["shadow_score"] is None for r in first)  # no candidate yet

        # 2. a person labels every item through the station's HTTP API (the page's own calls)
        labels = tmp_path / "labels"
        station = BackgroundStation(ReviewConfig(results=out, models=line, labels=labels, images=(), passed_sample=1.0,
                                                 port=free_port(), reviewer="qa")).__enter__()  # fmt: skip
        try:
            _, state = call(f"{station.url}/api/p/{PRODUCT}")
            for item in state["queue"]:
                verdict = "defect" if truth[item["id"]] else "good"
                status, _ = call(f"{station.url}/api/p/{PRODUCT}/label", {"key": item["key"], "label": verdict},
                                 station.headers())  # fmt: skip
                assert status == 200
        finally:
            station.__exit__(None, None, None)

        # 3. refine from the kept images (found through the results), a candidate beside the line's model
        runner = CliRunner()
        res = runner.invoke(main, ["refine", str(line / PRODUCT), "--labels", str(labels), "--results", str(out),
                                   "--max-steps", "40", "--no-progress", "--precision", "fp32", "--holdout", "0.4"])  # fmt: skip
        assert res.exit_code == 0, res.output
        cand = load_manifest(candidate_dir(line, PRODUCT))
        assert cand.lineage["labels"]["defect"] == sum(truth.values()) and cand.lineage["labels"]["skipped"] == 0

        # 4. the running worker shadow-scores the candidate; the verdict stays the promoted model's
        for ident, data in payload.items():
            q.push(client, PRODUCT, data, f"shadow-{ident}", None, stream_cfg)
        rows = wait_rows(out, 2 * len(payload))
        shadow = [r for r in rows if r["id"].startswith("shadow-")]
        assert {r["model_version"] for r in shadow} == {parent}
        assert {r["shadow_version"] for r in shadow} == {cand.model_version}
        assert all(r["shadow_score"] is not None for r in shadow)

        # 5. promote (the held-out labels must say it is no worse), and the running worker reloads it
        res = runner.invoke(main, ["promote", PRODUCT, "--models", str(line)])
        assert res.exit_code == 0, res.output + str(cand.lineage["heldout"])
        time.sleep(0.5)
        for ident, data in payload.items():
            q.push(client, PRODUCT, data, f"after-{ident}", None, stream_cfg)
        rows = wait_rows(out, 3 * len(payload))
    finally:
        worker.stop()
        thread.join(30)
    after = {r["id"][len("after-") :]: r for r in rows if r["id"].startswith("after-")}
    before = {r["id"]: r for r in first}
    assert {r["model_version"] for r in after.values()} == {cand.model_version}
    shadow_of = {r["id"][len("shadow-") :]: r["shadow_score"] for r in shadow}
    assert all(abs(after[i]["score"] - shadow_of[i]) < 1e-5 for i in after)  # the shadow was the candidate's score
    changed = [i for i in after if after[i]["is_anomaly"] != before[i]["is_anomaly"]]
    assert changed, "no verdict changed with the promoted model"
    assert not thread.is_alive()
