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
