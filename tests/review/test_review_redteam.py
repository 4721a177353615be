"""What an outside red team did to the station (issue 27), each now a test: a file swapped after its check,
non-finite numbers in results, hostile meta and bodies that broke a parser."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_review_api import call, post

from ear_stream.review.items import Item, find_image, read_inside


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_a_file_swapped_after_its_check_is_never_served(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "secret"
    root.mkdir()
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    good = _png(root / "a.png")
    assert read_inside(good, (root,), "image/png") == good.read_bytes()
    checked = root / "b.png"
    _png(checked)
    checked.unlink()
    checked.symlink_to(outside)  # the swap: a symlink where the checked image was
    assert read_inside(checked, (root,), "image/png") is None
    checked.unlink()
    checked.write_text("root:x:0:0 not an image at all")  # or other bytes under the checked name
    assert read_inside(checked, (root,), "image/png") is None
    elsewhere = _png(tmp_path / "c.png")  # a real image, outside the folders
    assert read_inside(elsewhere, (root,), "image/png") is None


def test_meta_whose_path_is_not_a_string_is_no_image_and_no_error(tmp_path):
    item = Item("k", "some-id", 0.1, 0.5, False, "v", "t", [], None, False, 123)  # type: ignore[arg-type]
    assert find_image((tmp_path,), "p", item) is None


@pytest.fixture
def nan_line(line):
    """One result row with a NaN score and a region with infinite stats: rows another tool may write."""
    part = sorted(line["results"].rglob("*.parquet"))[0]
    rows = pq.read_table(part).to_pylist()
    rows[0]["score"] = float("nan")
    table = pq.read_table(part)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    return line


def test_non_finite_numbers_in_results_never_break_the_page_or_a_label(station, nan_line):
    served = station()
    status, state, head = call(f"{served.url}/api/p/synthetic")
    assert status == 200 and head["content-type"].startswith("application/json")
    page = urllib.request.urlopen(f"{served.url}/p/synthetic", timeout=30).read().decode()  # noqa: S310
    block = re.search(r'<script[^>]*id="state"[^>]*>(.*?)</script>', page, re.S)
    if block:  # the page's state block parses as strict JSON (no bare NaN / Infinity)
        json.loads(block.group(1), parse_constant=lambda c: pytest.fail(f"bare {c} in the page"))
    key = state["queue"][0]["key"]
    status, after, _ = post(served, "/api/p/synthetic/label", {"key": key, "label": "defect"})
    assert status == 200 and after["counts"]["reviewed"] == 1  # stored, and said so


def test_bodies_that_break_a_parser_are_400_not_500(station, line):
    served = station()
    deep = ("[" * 6000 + "]" * 6000).encode()
    request = urllib.request.Request(f"{served.url}/api/p/synthetic/label", deep, served.headers())  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310
    assert err.value.code == 400 and b"not JSON" in err.value.read()
    huge = {"confirm": True, "model_version": "x", "threshold": 10**400}
    status, body, _ = post(served, "/api/p/synthetic/threshold", huge)
    assert status == 400 and "finite number" in body["error"]
