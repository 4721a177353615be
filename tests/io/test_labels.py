"""The label store: one atomic part per decision, the latest per (product, id) counting, weights kept apart."""

from __future__ import annotations

import pytest

from ear_stream.errors import ConfigError
from ear_stream.io.labels import Label, LabelStore, weights_of


def label(**overrides) -> Label:  # type: ignore[no-untyped-def]
    fields = {"product": "tile", "id": "a.png", "label": "defect", "flagged": True, "score": 2.0, "threshold": 1.0}
    fields.update(model_version="w1.t0", reviewer="ann")
    return Label(**{**fields, **overrides})


def test_the_latest_decision_per_product_and_id_counts(tmp_path):
    store = LabelStore(tmp_path / "labels")
    assert store.read().num_rows == 0
    store.add(label())
    store.add(label())  # sent twice
    store.add(label(id="b.png", label="good", score=0.5, flagged=False))
    store.add(label(label="good"))  # changed one's mind
    store.add(label(product="disk"))  # the same id on another line is another item
    rows = {(r["product"], r["id"]): r["label"] for r in store.read().to_pylist()}
    assert rows == {("tile", "a.png"): "good", ("tile", "b.png"): "good", ("disk", "a.png"): "defect"}
    assert store.read("disk").num_rows == 1
    assert not list((tmp_path / "labels").rglob(".*.tmp"))  # every part renamed into place


def test_a_part_left_half_written_by_a_crash_is_never_read(tmp_path):
    store = LabelStore(tmp_path)
    store.add(label())
    (tmp_path / "product=tile" / ".label-9-x.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert store.read().num_rows == 1


def test_scores_of_other_weights_are_left_out(tmp_path):
    store = LabelStore(tmp_path)
    store.add(label(model_version="w1.t0"))
    store.add(label(id="b.png", model_version="w1.t3", label="good", score=0.2))  # a later threshold revision
    store.add(label(id="c.png", model_version="w2.t0"))  # retrained weights: scores not comparable
    scores, labels, other = store.scores_for("w1.t4")
    assert sorted(scores.tolist()) == pytest.approx([0.2, 2.0]) and labels.sum() == 1 and other == 1
    assert weights_of("w1.t12") == "w1" and weights_of(None) == ""


def test_bad_labels_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="one of defect, good"):
        label(label="skip")
    with pytest.raises(ConfigError, match="product and an id"):
        label(id="")
    with pytest.raises(ConfigError, match="local folder"):
        LabelStore("s3://bucket/labels")


def test_the_labels_tree_reads_in_pandas_polars_and_duckdb(tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl

    store = LabelStore(tmp_path)
    store.add(label())
    store.add(label(product="disk", id="b.png", label="good"))
    frame = pd.read_parquet(tmp_path)  # product from the folder only: no string vs dictionary clash
    assert sorted(zip(frame["product"].astype(str), frame["id"], strict=True)) == [("disk", "b.png"), ("tile", "a.png")]
    polars = pl.read_parquet(tmp_path, hive_partitioning=True)
    assert sorted(polars["product"].to_list()) == ["disk", "tile"] and polars["reviewer"].to_list() == ["ann"] * 2
    rows = duckdb.sql(
        f"select product, label from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning = true) order by 1"
    ).fetchall()
    assert rows == [("disk", "good"), ("tile", "defect")]


def test_parts_of_before_still_read_and_unreadable_parts_are_skipped(tmp_path, caplog):
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ear_stream.io.labels import LABEL_SCHEMA

    store = LabelStore(tmp_path)
    store.add(label())
    old = {**label(id="old.png").__dict__, "reviewed_at": datetime.now(timezone.utc)}  # product inside as well
    pq.write_table(pa.Table.from_pylist([old], schema=LABEL_SCHEMA), tmp_path / "product=tile" / "label-1-old.parquet")
    (tmp_path / "product=tile" / "label-2-empty.parquet").write_bytes(b"")  # what a full disk leaves
    (tmp_path / "product=tile" / "label-3-cut.parquet").write_bytes(b"PAR1\x00\x00")
    rows = {r["id"]: r["product"] for r in store.read().to_pylist()}
    assert rows == {"a.png": "tile", "old.png": "tile"}
    assert sum("skipping unreadable label part" in r.getMessage() for r in caplog.records) == 2


def test_a_product_name_a_folder_cannot_hold_exactly_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="product name"):
        LabelStore(tmp_path).add(label(product="line 3/tile"))
