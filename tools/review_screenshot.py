"""Make docs/review_station.png: score some labelled test images, review a few, photograph the page.

    python tools/review_screenshot.py MODEL_DIR DATA_ROOT --category magnetic_tile --out docs/review_station.png

Scores ``--images`` test images of the category (good and defective, a fixed pick) with the model into a
temporary results tree, labels the last ``--reviewed`` queued items by their ground truth through the
station's own API (so the counts and the threshold proposal show), then opens the product page in
headless Debian Chromium, brushes across the first item's first region (as a reviewer marking the defect
does; nothing is stored) and saves a screenshot. Nothing of the temporary tree is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.scoring import score_files
from ear_stream.io.datasets import test_samples
from ear_stream.review.browser import start_chromium
from ear_stream.review.config import ReviewConfig
from ear_stream.review.serve import BackgroundStation
from ear_stream.stream.redis_server import free_port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--out", type=Path, default=Path("docs/review_station.png").resolve())
    p.add_argument("--images", type=int, default=40, help="test images scored (every k-th, good and defective)")
    p.add_argument("--reviewed", type=int, default=17, help="queued items labelled before the screenshot")
    args = p.parse_args()
    args.out, args.model = args.out.resolve(), args.model.resolve()

    data_root = args.data_root.resolve()
    os.chdir(data_root)  # ids relative to the data root, as a line would name its images
    samples = test_samples(".", args.category)
    picked = samples[:: max(1, len(samples) // args.images)][: args.images]
    truth = {str(s.path): s.defect != "good" for s in picked}
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        pipe = Pipeline.from_artifact(args.model, device="cpu")
        score_files(pipe, [s.path for s in picked], results, args.category, save_maps=Path(tmp) / "maps")
        models = Path(tmp) / "models"
        models.mkdir()
        (models / args.category).symlink_to(args.model)  # shows the apply button; nothing is applied
        cfg = ReviewConfig(
            results=results, models=models, images=(data_root,), port=free_port(), passed_sample=0.3, reviewer="line-3"
        )
        with BackgroundStation(cfg) as station:
            api = f"{station.url}/api/p/{args.category}"
            with urllib.request.urlopen(api, timeout=60) as response:  # noqa: S310
                state = json.loads(response.read())
            for item in state["queue"][-args.reviewed :]:  # from the end: the top flagged item stays on screen
                label = "defect" if truth[item["id"]] else "good"
                station.post(f"/api/p/{args.category}/label", {"key": item["key"], "label": label})
            driver = start_chromium(Path(tmp) / "profile")
            try:
                driver.set_window_size(1180, 1100)
                driver.get(f"{station.url}/p/{args.category}")
                time.sleep(1.5)  # images and boxes drawn
                brush_first_region(driver)
                args.out.write_bytes(driver.get_screenshot_as_png())
            finally:
                driver.quit()
    print(f"wrote {args.out}")


def brush_first_region(driver) -> None:  # type: ignore[no-untyped-def]
    """Drag across the first region box, as a reviewer brushing the defect does (nothing is stored)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    boxes = driver.find_elements(By.CSS_SELECTOR, "#boxes rect")
    if not boxes:
        return
    width = boxes[0].size["width"]
    chain = ActionChains(driver).move_to_element_with_offset(boxes[0], -int(width // 3), 0).click_and_hold()
    chain.move_by_offset(int(2 * width // 3), 0).release().perform()
    time.sleep(0.3)


if __name__ == "__main__":
    main()
