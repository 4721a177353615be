"""One row builder next to the schema: every writer (``score``, the stream worker, the Ray actors) goes through it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from ear_stream.inspect.pipeline import BatchResult
from ear_stream.inspect.scoring import result_rows
from ear_stream.io.results import SCHEMA, ResultWriter, read_results, verdict_row

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
REQUIRED = dict(id="a", product="p", score=0.5, normalized_score=0.25, is_anomaly=False, threshold=2.0,
                mask_ratio=0.1, mosaic_scale=8, model_version="v1", worker="w", processed_at=NOW)  # fmt: skip


def test_a_row_has_exactly_the_schema_columns_in_its_order():
    assert list(verdict_row(**REQUIRED)) == SCHEMA.names
    stream = verdict_row(**REQUIRED, stream_id="1-0", enqueued_at=NOW, meta="{}", regions=[], heatmap=b"png")
    assert list(stream) == SCHEMA.names


def test_derived_columns_are_derived_once_here():
    row = verdict_row(**REQUIRED, enqueued_at=NOW - timedelta(milliseconds=250), regions=[{"area": 3}] * 2)
    assert row["latency_ms"] == pytest.approx(250.0) and row["n_regions"] == 2
    assert verdict_row(**REQUIRED)["n_regions"] is None  # regions not asked for
    assert verdict_row(**REQUIRED)["latency_ms"] is None  # no enqueue time (offline, or an implausible stream id)
    # fail closed: a frame the model cannot judge is never a good part
    assert verdict_row(**REQUIRED, frame_check="invalid_frame: near-constant")["is_anomaly"] is True
    with pytest.raises(TypeError):
        verdict_row(**REQUIRED, colour="red")  # a column the schema does not have


def _batch(n: int, ood=None) -> tuple[SimpleNamespace, BatchResult]:
    pipe = SimpleNamespace(threshold=1.0, model_version="v2", config=SimpleNamespace(mosaic_scale=4))
    scores = np.linspace(0.5, 1.5, n).astype(np.float32)
    res = BatchResult(scores=scores, normalized=scores, is_anomaly=scores > 1.0, mask_ratio=np.zeros(n), ood=ood)
    return pipe, res


def test_score_and_the_worker_build_rows_through_it(tmp_path):
    pipe, res = _batch(3, ood=[None, "out_of_distribution: noise", None])
    offline = result_rows(pipe, res, ["x", "y", "z"], "p", "cli", [{"meta": "{}", "frame_check": None}] * 3)  # type: ignore[arg-type]
    assert all(list(r) == SCHEMA.names for r in offline)
    assert [r["frame_check"] for r in offline] == [None, "out_of_distribution: noise", None]
    assert [r["is_anomaly"] for r in offline] == [False, True, True]
    assert len({r["processed_at"] for r in offline}) == 1  # one time per batch
    stream = [{"stream_id": f"{i}-0", "enqueued_at": NOW, "meta": None, "frame_check": None} for i in range(3)]
    rows = result_rows(pipe, res, ["x", "y", "z"], "p", "w1", stream, processed_at=NOW + timedelta(seconds=1))  # type: ignore[arg-type]
    assert all(list(r) == SCHEMA.names for r in rows)
    assert [r["latency_ms"] for r in rows] == [pytest.approx(1000.0)] * 3 and rows[0]["stream_id"] == "0-0"
    ResultWriter(tmp_path, "w1").write(rows)
    table = read_results(tmp_path)
    assert table.num_rows == 3 and table.column_names == SCHEMA.names
