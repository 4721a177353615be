"""The review station shows the image the line kept (``image_uri``), through the blob store, with every guard."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.scoring import score_files
from ear_stream.io import datasets
from ear_stream.io.keeping import ImageKeeper, KeepPolicy
from ear_stream.io.results import read_results


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a loopback test server
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_the_station_serves_the_kept_image_and_nothing_it_cannot_verify(station, line, tmp_path):
    keep = tmp_path / "kept"
    results = tmp_path / "kept-results"
    pipe = Pipeline.from_artifact(line["models"] / "synthetic", device="cpu")
    files = [s.path for s in datasets.test_samples(line["images"], "synthetic")]
    keeper = ImageKeeper(KeepPolicy(str(keep), 1.0))
    score_files(pipe, files, results, "synthetic", progress=False, keeper=keeper)
    rows = read_results(results).to_pylist()
    assert rows and all(r["image_uri"] for r in rows)

    served = station(results=results, images=())  # no --images: only the kept images can be shown
    status, body, _ = get(f"{served.url}/api/p/synthetic")
    queue = json.loads(body)["queue"]
    assert status == 200 and all(it["kept"] for it in queue)
    item = queue[0]
    status, data, head = get(f"{served.url}/p/synthetic/image/{item['key']}")
    assert status == 200 and data == Path(item["id"]).read_bytes()  # the original file
    assert head["content-type"] == "image/png" and head["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in head["content-security-policy"]

    # a blob that no longer matches its sha256 is never served
    row = next(r for r in rows if r["id"] == item["id"])
    blob = keep / "/".join(row["image_uri"].rsplit("/", 2)[-2:])
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    status, _, _ = get(f"{station(results=results, images=()).url}/p/synthetic/image/{item['key']}")
    assert status == 404

    # a copy of the store, named with --image-store, serves the same references
    copy = tmp_path / "copy"
    shutil.copytree(keep, copy)
    other = next(it for it in queue if it["id"] != item["id"])
    shutil.rmtree(keep)
    status, _, _ = get(f"{station(results=results, images=()).url}/p/synthetic/image/{other['key']}")
    assert status == 404  # the store the rows name is gone
    from_copy = station(results=results, images=(), image_stores=(str(copy),))
    status, data, _ = get(f"{from_copy.url}/p/synthetic/image/{other['key']}")
    assert status == 200 and data == Path(other["id"]).read_bytes()


def test_without_a_kept_image_the_station_still_serves_from_images(station, line):
    served = station()  # the line's rows were scored without --keep-images: image_uri null
    status, body, _ = get(f"{served.url}/api/p/synthetic")
    item = json.loads(body)["queue"][0]
    assert not item["kept"]
    status, data, head = get(f"{served.url}/p/synthetic/image/{item['key']}")
    assert status == 200 and head["content-type"] == "image/png" and data.startswith(b"\x89PNG")
