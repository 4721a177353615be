"""``ear-stream labels import/export``: all rows or none, one line per bad row, masks and labels round-trip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image, ImageDraw

from ear_stream.cli import main
from ear_stream.io.labels import Label, LabelStore, Mask


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def image(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


def mask_png(path: Path, size: tuple[int, int] = (16, 12), box: tuple[int, int, int, int] = (2, 2, 6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).rectangle(box, fill=200)  # 200 ≥ 128: defect
    img.save(path)
    return path


def line(tmp_path: Path) -> tuple[Path, Path]:
    """An image folder of a product and a QA system's CSV about it (one defect with a mask)."""
    images = tmp_path / "images"
    for name in ("crack/001.png", "crack/002.png", "good/001.png", "good/002.png"):
        image(images / name)
    mask_png(tmp_path / "qa" / "masks" / "crack_001.png")
    csv = tmp_path / "qa" / "week12.csv"
    csv.write_text(
        "id,label,mask\ncrack/001.png,defect,masks/crack_001.png\ncrack/002.png,DEFECT,\n"
        "good/001.png,good,\ngood/002.png,good\n"
    )
    return images, csv


def test_import_a_good_csv_and_the_label_store_reads_it_back(tmp_path):
    images, csv = line(tmp_path)
    labels = tmp_path / "labels"
    result = run(
        "labels", "import", csv, "--labels", labels, "--product", "tile", "--images", images, "--reviewer", "qa"
    )
    assert result.exit_code == 0, result.output
    assert "imported 4 labels of tile (2 defect, 2 good, 1 with a mask)" in result.output
    parts = list((labels / "product=tile").glob("label-*.parquet"))
    assert len(parts) == 1  # one atomic part for the whole file
    rows = {r["id"]: r for r in LabelStore(labels).read("tile", masks=True).to_pylist()}
    assert {i: r["label"] for i, r in rows.items()} == {
        "crack/001.png": "defect",
        "crack/002.png": "defect",
        "good/001.png": "good",
        "good/002.png": "good",
    }
    assert all(r["reviewer"] == "qa" and r["score"] is None for r in rows.values())
    mask = Mask.of_row(rows["crack/001.png"])
    assert mask is not None and (mask.width, mask.height) == (16, 12) and mask.area == 5 * 4
    assert Mask.of_row(rows["crack/002.png"]) is None


def test_every_bad_row_gets_a_line_and_nothing_is_written(tmp_path):
    images, _ = line(tmp_path)
    mask_png(tmp_path / "qa" / "small.png", size=(8, 8))
    (tmp_path / "qa" / "not-a-png.png").write_bytes(b"GIF89a")
    (tmp_path / "qa" / "empty.png").write_bytes(_empty_mask())
    bad = tmp_path / "qa" / "bad.csv"
    bad.write_text(
        "id,label,mask\n"
        "crack/001.png,defect,masks/crack_001.png\n"  # row 2: good
        "crack/002.png,NG,\n"  # row 3: unknown label
        "crack/404.png,defect,\n"  # row 4: no such image
        "crack/001.png,good,\n"  # row 5: duplicate id
        "good/001.png,good,masks/crack_001.png\n"  # row 6: a mask on a good label
        "crack/002.png,defect,small.png\n"  # row 7: mask of another size
        "good/002.png,defect,not-a-png.png\n"  # row 8: not a PNG
        "../outside.png,defect,\n"  # row 9: outside --images
        ",defect,\n"  # row 10: no id
        "\n"
        "good/001.png,defect,empty.png\n"  # row 12: a mask marking nothing
        "good/002.png,defect,missing.png\n"  # row 13: no mask file
    )
    labels = tmp_path / "labels"
    result = run("labels", "import", bad, "--labels", labels, "--product", "tile", "--images", images)
    assert result.exit_code == 1
    lines = [x for x in result.stderr.splitlines() if ", row " in x]
    assert [int(x.split(", row ")[1].split(":")[0]) for x in lines] == [3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    text = "\n".join(lines)
    for why in (
        "label is defect or good, got 'NG'",
        "no image 'crack/404.png'",
        "is also on row 2",
        "this row is labelled good",
        "is 8x8, the image is 16x12",
        "a PNG",
        "outside --images",
        "no id",
        "marks no pixel",
        "no mask file 'missing.png'",
    ):
        assert why in text, why
    assert "10 of 11 rows are bad: nothing written" in result.stderr
    assert not labels.exists() or not list(labels.rglob("*.parquet"))

    skipped = run("labels", "import", bad, "--labels", labels, "--product", "tile", "--images", images, "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert "imported 1 label of tile" in skipped.output and "10 bad rows skipped" in skipped.output
    assert [r["id"] for r in LabelStore(labels).read().to_pylist()] == ["crack/001.png"]


def _empty_mask() -> bytes:
    out = io.BytesIO()
    Image.new("L", (16, 12), 40).save(out, format="PNG")  # grey 40 < 128 everywhere
    return out.getvalue()


def test_a_dry_run_and_a_file_that_is_no_label_csv_write_nothing(tmp_path):
    _, csv = line(tmp_path)
    labels = tmp_path / "labels"
    dry = run("labels", "import", csv, "--labels", labels, "--product", "tile", "--dry-run")
    assert dry.exit_code == 0 and "would import 4 labels" in dry.output and not labels.exists()
    headless = tmp_path / "headless.csv"
    headless.write_text("crack/001.png,defect\n")
    result = run("labels", "import", headless, "--labels", labels, "--product", "tile")
    assert result.exit_code == 1 and "needs a header with columns id,label" in result.stderr
    result = run("labels", "import", csv, "--labels", labels, "--product", "line 3/tile")
    assert result.exit_code == 1 and "product name" in result.stderr
    assert not labels.exists()


def test_export_round_trips_labels_and_masks(tmp_path):
    images, csv = line(tmp_path)
    labels = tmp_path / "labels"
    assert run("labels", "import", csv, "--labels", labels, "--product", "tile", "--images", images).exit_code == 0
    store = LabelStore(labels)
    store.add(Label(product="tile", id="good/002.png", label="defect", reviewer="ann"))  # a mind changed on the page
    store.add(Label(product="disk", id="other.png", label="good", reviewer="ann"))  # another product: not exported

    out = tmp_path / "export" / "tile.csv"
    result = run("labels", "export", "--labels", labels, "--product", "tile", "--out", out)
    assert result.exit_code == 0, result.output
    assert "exported 4 labels of tile (1 with a mask)" in result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label,mask" and len(lines) == 5
    assert "good/002.png,defect," in lines  # the latest decision
    mask_cell = next(x.split(",")[2] for x in lines if x.startswith("crack/001.png"))
    assert mask_cell.startswith("tile-masks/") and (out.parent / mask_cell).is_file()
    assert not list(out.parent.rglob(".*.tmp"))

    again = tmp_path / "again"
    assert run("labels", "import", out, "--labels", again, "--product", "tile", "--images", images).exit_code == 0

    def read(folder: Path) -> dict:
        rows = LabelStore(folder).read("tile", masks=True).to_pylist()
        return {r["id"]: (r["label"], Mask.of_row(r)) for r in rows}

    assert read(again) == read(labels)
    exported_mask = read(again)["crack/001.png"][1]
    assert exported_mask is not None
    expected = np.zeros((12, 16), bool)
    expected[2:6, 2:7] = True  # the drawn box, inclusive corners
    assert (exported_mask.array() == expected).all()

    missing = run("labels", "export", "--labels", labels, "--product", "bracket", "--out", tmp_path / "x.csv")
    assert missing.exit_code == 1 and "products there: disk, tile" in missing.stderr


def test_help_teaches_by_example():
    for verb in (("labels",), ("labels", "import"), ("labels", "export")):
        result = run(*verb, "--help")
        assert result.exit_code == 0 and "ear-stream labels " in result.output
    assert "id,label,mask" in run("labels", "--help").output
