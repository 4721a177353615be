"""The review station in a real browser (Debian's Chromium through Selenium): keys, labels, proposal, apply."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ear_stream.io.labels import LabelStore
from ear_stream.model.artifact import load_manifest
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


def test_reviewing_with_the_keyboard_stores_labels_and_applies_a_threshold(station, line, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    served = station(token="k3y")
    browser.get(f"{served.url}/?token=k3y")  # the token once; the cookie carries it from here
    browser.find_element(By.LINK_TEXT, "synthetic").click()
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
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
    browser.find_element(By.ID, "apply").click()
    assert "Applied" in wait_for(lambda: browser.find_elements(By.ID, "applied") and text("applied"))
    assert load_manifest(line["models"] / "synthetic").threshold_policy == "f1"
