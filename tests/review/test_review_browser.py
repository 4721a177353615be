"""The review station in a real browser (Debian's Chromium through Selenium): keys, labels, proposal, confirm,
apply; boxes on a non-square image where its defect is; hostile strings shown as text, never run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import BOX, EVIL_CHECK, EVIL_VERSION, PRODUCT, WIDE, WIDE_SIZE, write_hostile_line

from ear_stream.io.labels import LabelStore
from ear_stream.model.artifact import load_manifest, write_manifest
from ear_stream.review.browser import missing_browser

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


def wait_for(condition, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the page")
        time.sleep(0.05)


@pytest.fixture
def browser(tmp_path):
    from ear_stream.review.browser import start_chromium

    driver = start_chromium(tmp_path / "profile")
    yield driver
    driver.quit()


def set_held_out_scores(model: Path, value: float) -> None:
    """Held-out good scores all at ``value``: 0 passes the false-reject bound, a huge one fails it."""
    manifest = load_manifest(model)
    manifest.calibration = {**manifest.calibration, "scores": np.full(20, value).tolist()}
    write_manifest(model, manifest)


def test_reviewing_with_the_keyboard_stores_labels_and_applies_a_confirmed_threshold(station, line, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    served = station(token="k3y", min_labels_per_class=3)
    browser.get(f"{served.url}/?token=k3y")  # the token once; the cookie carries it from here
    browser.find_element(By.LINK_TEXT, "synthetic").click()
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    shown = lambda element_id: browser.find_elements(By.ID, element_id) and text(element_id)  # noqa: E731
    total = int(wait_for(lambda: text("n-to-review")))
    store = LabelStore(line["labels"])

    def press(key: str) -> None:
        ActionChains(browser).send_keys(key).perform()

    def current_id() -> str:
        return text("item-id")

    seen = current_id()
    press("s")  # skip: nothing stored, the next item shows
    wait_for(lambda: current_id() != seen)
    assert store.read().num_rows == 0
    for n in range(1, total):  # every item but the skipped one, labelled by its ground truth
        ident = current_id()
        press("d" if line["truth"][ident] else "f")
        wait_for(lambda n=n: store.read().num_rows == n)
        wait_for(lambda n=n: text("n-to-review") == str(total - n))
    labels = {r["id"]: r["label"] for r in store.read("synthetic").to_pylist()}
    assert seen not in labels and len(labels) == total - 1
    assert current_id() == seen  # the end of the queue comes back to the skipped item
    assert all((lab == "defect") == line["truth"][i] for i, lab in labels.items())
    counts = {k: int(text(f"n-{k}")) for k in ("confirmed", "false-alarms", "escapes", "good-passes")}
    assert sum(counts.values()) == total - 1
    assert counts["confirmed"] + counts["escapes"] == sum(v for i, v in line["truth"].items() if i != seen)

    assert "Proposed" in wait_for(lambda: text("proposed-point"))
    screenshot = os.environ.get("EAR_REVIEW_SCREENSHOT")
    if screenshot:
        Path(screenshot).write_bytes(browser.get_screenshot_as_png())
    model = line["models"] / "synthetic"
    before = load_manifest(model)

    set_held_out_scores(model, 1e6)  # the proposal would reject every held-out good image: refused, no way on
    browser.find_element(By.ID, "apply").click()
    assert "rejects 100.0%" in wait_for(lambda: shown("proposal-refused"))
    assert not browser.find_elements(By.ID, "confirm-apply")
    browser.find_element(By.ID, "cancel-apply").click()

    set_held_out_scores(model, 0.0)
    browser.find_element(By.ID, "apply").click()  # step 1: the proposal and what it does, nothing written
    assert "false rejects" in wait_for(lambda: shown("proposal-reviewed"))
    assert "0.0 %" in text("proposal-held-out")
    assert load_manifest(model).threshold_revision == before.threshold_revision
    browser.find_element(By.ID, "confirm-apply").click()  # step 2: confirmed
    assert "Applied" in wait_for(lambda: shown("applied"))
    after = load_manifest(model)
    assert after.threshold_policy == "f1" and after.threshold_history[-1]["reviewer"] == "tester"
    assert "by tester" in text("applied")


@pytest.fixture
def hostile_station(tmp_path):  # type: ignore[no-untyped-def]
    from ear_stream.review.config import ReviewConfig
    from ear_stream.review.serve import BackgroundStation
    from ear_stream.stream.redis_server import free_port

    folders = write_hostile_line(tmp_path)
    cfg = ReviewConfig(results=folders["results"], images=(folders["images"],), port=free_port(), passed_sample=1.0)
    with BackgroundStation(cfg) as served:
        yield served


def test_boxes_land_on_the_defect_of_a_non_square_image_and_strings_stay_text(hostile_station, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{hostile_station.url}/p/{PRODUCT}")
    assert wait_for(lambda: browser.find_element(By.ID, "item-id").text) == WIDE  # the top-scored item
    geometry = wait_for(
        lambda: browser.execute_script(
            """const img = document.getElementById("image"), rect = document.querySelector("#boxes rect");
            if (!img.complete || !img.naturalWidth || !rect) { return null; }
            const i = img.getBoundingClientRect(), r = rect.getBoundingClientRect();
            return {img: [i.left, i.top, i.width, i.height], natural: [img.naturalWidth, img.naturalHeight],
                    box: [r.left, r.top, r.width, r.height]};"""
        )
    )
    assert geometry["natural"] == list(WIDE_SIZE)
    left, top, width, height = geometry["img"]
    scale = min(width / WIDE_SIZE[0], height / WIDE_SIZE[1])  # object-fit: contain, centred
    x = left + (width - WIDE_SIZE[0] * scale) / 2 + BOX["x0"] * scale
    y = top + (height - WIDE_SIZE[1] * scale) / 2 + BOX["y0"] * scale
    side = (BOX["x1"] - BOX["x0"] + 1) * scale
    assert geometry["box"] == pytest.approx([x, y, side, side], abs=1.5)  # on the defect, not beside it
    assert height / width != pytest.approx(WIDE_SIZE[1] / WIDE_SIZE[0])  # the frame is square: letterboxed

    # a model_version and a frame check holding markup: shown as text, nothing ran
    assert browser.find_element(By.ID, "item-model").text == EVIL_VERSION
    assert browser.find_element(By.ID, "frame-check").text == EVIL_CHECK
    assert not browser.find_elements(By.CSS_SELECTOR, "#facts img, #facts script, #threshold img")
    time.sleep(0.3)  # an onerror handler would have run by now
    assert browser.execute_script("return window.__pwned === undefined")
    # the page itself needs nothing its Content-Security-Policy forbids (no inline script or style)
    assert not [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def test_a_brushed_region_is_stored_with_the_defect_label_where_it_was_drawn(hostile_station, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(f"{hostile_station.url}/p/{PRODUCT}")
    assert wait_for(lambda: browser.find_element(By.ID, "item-id").text) == WIDE
    img = browser.find_element(By.ID, "image")
    wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
    rect = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", img)
    scale = min(rect[0] / WIDE_SIZE[0], rect[1] / WIDE_SIZE[1])  # letterboxed, as the boxes are
    cx, cy = (BOX["x0"] + BOX["x1"]) / 2, (BOX["y0"] + BOX["y1"]) / 2  # the defect's centre, image pixels
    dx, dy = (cx - WIDE_SIZE[0] / 2) * scale, (cy - WIDE_SIZE[1] / 2) * scale  # from the element's centre
    svg = browser.find_element(By.ID, "boxes")
    chain = ActionChains(browser).move_to_element_with_offset(svg, int(dx - 8 * scale), int(dy)).click_and_hold()
    chain.move_by_offset(int(16 * scale), 0).release().perform()
    assert "brushed" in wait_for(lambda: browser.find_element(By.ID, "brushed").text)
    ActionChains(browser).send_keys("d").perform()
    store = LabelStore(hostile_station.cfg.results.with_name("results-labels"))
    rows = wait_for(lambda: store.read(PRODUCT, masks=True).to_pylist())
    from ear_stream.io.labels import Mask

    mask = Mask.of_row(rows[0])
    assert rows[0]["label"] == "defect" and mask is not None
    assert (mask.width, mask.height) == WIDE_SIZE  # the image's own pixels
    ys, xs = np.nonzero(mask.array())
    assert abs(xs.mean() - cx) < 6 and abs(ys.mean() - cy) < 6  # where it was drawn, letterbox and all
    assert xs.min() >= BOX["x0"] - 12 and xs.max() <= BOX["x1"] + 12
