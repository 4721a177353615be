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


def drawn(
    mode: str = "L", size: tuple[int, int] = (6, 4), box: tuple[int, int, int, int] | None = (1, 1, 3, 3)
) -> bytes:
    """A PNG of ``size`` in ``mode`` with ``box`` (x0, y0, x1, y1, exclusive) drawn as the defect (None: nothing)."""
    import io

    from PIL import Image, ImageDraw

    if box is None:
        img = Image.new("L", size, 0)
    elif mode == "RGBA":  # a brush stroke on a transparent layer: the colour says nothing, the alpha does
        img = Image.new("RGBA", size, (255, 255, 255, 0))
        ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 0, 255))
    elif mode == "I;16":
        img = Image.new("I;16", size, 0)
        ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=65535)
        img.putpixel((0, 0), 200)  # 200 of 65535: dark, not defect (an 8-bit clip would call it 255)
    else:
        img = Image.new("L", size, 0).convert(mode)
        ImageDraw.Draw(img).rectangle(
            (box[0], box[1], box[2] - 1, box[3] - 1), fill=255 if mode in ("L", "1") else (255, 255, 255)
        )
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "RGBA", "I;16"])
def test_a_drawn_mask_is_stored_binary_and_single_channel(mode):
    import io

    import numpy as np
    from PIL import Image

    from ear_stream.io.labels import Mask

    mask = Mask.from_png(drawn(mode))
    assert (mask.width, mask.height) == (6, 4) and mask.area == 4
    with Image.open(io.BytesIO(mask.png)) as img:
        assert img.format == "PNG" and img.mode == "L" and set(np.asarray(img).ravel()) == {0, 255}
    expected = np.zeros((4, 6), bool)
    expected[1:3, 1:3] = True
    assert (mask.array() == expected).all()
    assert Mask.from_png(mask.png) == mask  # normalising twice changes nothing: the same bytes


def test_masks_that_are_no_mask_are_refused():
    import io

    from PIL import Image

    from ear_stream.io.labels import Mask

    jpeg = io.BytesIO()
    Image.new("L", (4, 4), 255).save(jpeg, format="JPEG")
    with pytest.raises(ConfigError, match="a PNG"):
        Mask.from_png(jpeg.getvalue())
    with pytest.raises(ConfigError, match="cannot be read"):
        Mask.from_png(drawn()[:40])  # cut short
    with pytest.raises(ConfigError, match="marks no pixel"):
        Mask.from_png(drawn(box=None))
    with pytest.raises(ConfigError, match="at most 10 pixels"):
        Mask.from_png(drawn(), max_pixels=10)


def test_a_mask_is_kept_with_its_label_in_one_part(tmp_path):
    from ear_stream.io.labels import Mask

    store = LabelStore(tmp_path)
    mask = Mask.from_png(drawn())
    part = store.add(label(), mask=mask)
    store.add(label(id="b.png", label="good"))
    assert [p.name for p in (tmp_path / "product=tile").iterdir()].count(part.name) == 1
    assert len(list(tmp_path.rglob("*"))) == 3  # one folder, two parts: nothing beside them
    rows = {r["id"]: r for r in store.read().to_pylist()}
    assert "mask" not in rows["a.png"]  # the review station's reads stay small
    assert (rows["a.png"]["mask_width"], rows["a.png"]["mask_height"]) == (6, 4)
    assert rows["b.png"]["mask_width"] is None
    full = {r["id"]: r for r in store.read("tile", masks=True).to_pylist()}
    assert Mask.of_row(full["a.png"]) == mask and Mask.of_row(full["b.png"]) is None
    with pytest.raises(ConfigError, match="marks a defect"):
        store.add(label(id="c.png", label="good"), mask=mask)
    import polars as pl

    tree = pl.read_parquet(tmp_path, hive_partitioning=True)  # masks inside the parts: still one Parquet tree
    assert sorted(tree["mask_width"].to_list(), key=str) == [6, None]


def test_many_labels_in_one_part_and_imported_labels_never_move_a_threshold(tmp_path):
    store = LabelStore(tmp_path)
    store.add(label(model_version="w1.t0", score=2.0))
    imported = [Label(product="tile", id=f"x{i}.png", label="defect", reviewer="qa") for i in range(3)]
    store.add_many(imported)
    assert len(list((tmp_path / "product=tile").glob("label-*.parquet"))) == 2
    rows = {r["id"]: r for r in store.read().to_pylist()}
    assert rows["x0.png"]["score"] is None and rows["x0.png"]["flagged"] is None
    scores, defect, other = store.scores_for("w1.t1")
    assert scores.tolist() == [2.0] and defect.tolist() == [True] and other == 3
    with pytest.raises(ConfigError, match="one product"):
        store.add_many([label(), label(product="disk")])
    with pytest.raises(ConfigError, match="no labels"):
        store.add_many([])
