"""The review station over HTTP: queue, labels in Parquet, the token, images only from --images, thresholds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import needs_redis

from ear_stream.io.labels import LabelStore
from ear_stream.model.artifact import load_manifest


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict | bytes, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})  # noqa: S310 - a loopback test server
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a loopback test server
            raw, status, head = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        raw, status, head = err.read(), err.code, dict(err.headers)
    is_json = head.get("content-type", "").startswith("application/json")
    return status, json.loads(raw) if is_json else raw, head


def test_flagged_items_come_first_and_each_decision_is_stored_once(station, line):
    served = station()
    status, state, _ = call(f"{served.url}/api/p/synthetic")
    assert status == 200
    queue = state["queue"]
    assert len(queue) == len(line["truth"]) == state["counts"]["to_review"]  # passed_sample 1.0: every item
    flagged = [it["flagged"] for it in queue]
    assert flagged == sorted(flagged, reverse=True)  # flagged first, then the passed sample

    first = queue[0]
    for _ in range(2):  # the same decision sent twice (a double click, a retry) is one label
        status, after, _ = call(f"{served.url}/api/p/synthetic/label", {"key": first["key"], "label": "defect"})
        assert status == 200
    status, after, _ = call(f"{served.url}/api/p/synthetic/label", {"key": first["key"], "label": "good"})
    labels = LabelStore(line["labels"]).read("synthetic").to_pylist()
    assert len(labels) == 1 and labels[0]["label"] == "good"  # the latest decision counts
    assert labels[0]["id"] == first["id"] and labels[0]["reviewer"] == "tester"
    assert labels[0]["model_version"] == first["model_version"] and labels[0]["flagged"] == first["flagged"]
    assert first["key"] not in {it["key"] for it in after["queue"]}
    assert after["counts"]["reviewed"] == 1

    # a restarted station shows only what is still to review
    status, again, _ = call(f"{station().url}/api/p/synthetic")
    assert again["counts"]["reviewed"] == 1 and len(again["queue"]) == len(queue) - 1


def test_bad_requests_get_clear_errors_and_store_nothing(station, line):
    served = station()
    key = call(f"{served.url}/api/p/synthetic")[1]["queue"][0]["key"]
    status, body, _ = call(f"{served.url}/api/p/synthetic/label", {"key": key, "label": "maybe"})
    assert status == 400 and "defect, good" in body["error"]
    status, body, _ = call(f"{served.url}/api/p/synthetic/label", {"key": "nope", "label": "good"})
    assert status == 404 and "unknown item" in body["error"]
    assert call(f"{served.url}/api/p/..%2Fetc")[0] == 404
    assert LabelStore(line["labels"]).read().num_rows == 0


def test_images_come_from_the_configured_folders_only(station, line, tmp_path):
    served = station()
    item = call(f"{served.url}/api/p/synthetic")[1]["queue"][0]
    status, body, _ = call(f"{served.url}/p/synthetic/image/{item['key']}")
    assert status == 200 and body[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1")
    status, body, _ = call(f"{served.url}/p/synthetic/heatmap/{item['key']}.png")
    assert status == 200 and body[:4] == b"\x89PNG"
    # the same ids with --images elsewhere: the heatmap still shows, the original is not served
    other = station(images=(tmp_path / "maps",))
    assert call(f"{other.url}/p/synthetic/image/{item['key']}")[0] == 404
    assert call(f"{other.url}/p/synthetic/heatmap/{item['key']}.png")[0] == 200


def test_an_exposed_station_needs_its_token(station):
    served = station(token="s3cret")
    assert call(f"{served.url}/api/p/synthetic")[0] == 401
    assert call(f"{served.url}/api/p/synthetic?token=wrong")[0] == 401
    status, _, head = call(f"{served.url}/?token=s3cret")
    assert status == 200 and "HttpOnly" in head["set-cookie"] and "SameSite=Strict" in head["set-cookie"]
    cookie = head["set-cookie"].split(";")[0]
    assert call(f"{served.url}/api/p/synthetic", headers={"cookie": cookie})[0] == 200
    assert call(f"{served.url}/api/p/synthetic", headers={"authorization": "Bearer s3cret"})[0] == 200


def test_a_non_loopback_host_without_a_token_is_refused(line):
    from ear_stream.errors import ConfigError
    from ear_stream.review.config import ReviewConfig

    with pytest.raises(ConfigError, match="--token"):
        ReviewConfig(results=line["results"], host="0.0.0.0")
    assert ReviewConfig(results=line["results"], host="::1").labels == line["results"].with_name("results-labels")


def review_everything(served, truth: dict) -> dict:
    """Label every queued item with its ground truth; returns the last state."""
    state = call(f"{served.url}/api/p/synthetic")[1]
    for item in list(state["queue"]):
        label = "defect" if truth[item["id"]] else "good"
        state = call(f"{served.url}/api/p/synthetic/label", {"key": item["key"], "label": label})[1]
    return state


def test_reviewed_labels_propose_and_apply_a_threshold(station, line):
    served = station()
    state = review_everything(served, line["truth"])
    counts, view = state["counts"], state["thresholds"]
    n_defects = sum(line["truth"].values())
    assert counts["confirmed"] + counts["escapes"] == n_defects
    assert view["current"]["defects"] == n_defects and view["reviewed_same_weights"] == len(line["truth"])
    proposed = view["proposed"]
    assert (
        proposed["escapes"] + proposed["false_alarms"] <= view["current"]["escapes"] + view["current"]["false_alarms"]
    )

    before = load_manifest(line["models"] / "synthetic")
    status, applied, _ = call(f"{served.url}/api/p/synthetic/threshold", {})
    assert status == 200, applied
    after = load_manifest(line["models"] / "synthetic")
    assert after.threshold == pytest.approx(proposed["threshold"]) and after.threshold_policy == "f1"
    assert after.threshold_history[-1]["threshold"] == before.threshold  # history kept
    assert after.model_version != before.model_version  # results show which revision judged them
    assert applied["thresholds"]["current"]["threshold"] == pytest.approx(after.threshold)


def test_threshold_cli_takes_the_reviewed_labels(station, line):
    from click.testing import CliRunner

    from ear_stream.cli import main

    review_everything(station(), line["truth"])
    model = line["models"] / "synthetic"
    result = CliRunner().invoke(
        main, ["threshold", str(model), "--policy", "f1", "--labels", str(line["labels"]), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "reviewed items" in result.output and load_manifest(model).threshold_policy == "f1"
    # labels of other weights are not comparable: refused with the reason
    other = line["results"].parent / "other-labels"
    LabelStore(other).add(_label(model_version="feedbeef.t0"))
    result = CliRunner().invoke(main, ["threshold", str(model), "--policy", "f1", "--labels", str(other)])
    assert result.exit_code != 0 and "other weights" in result.output


def _label(**overrides):  # type: ignore[no-untyped-def]
    from ear_stream.io.labels import Label

    fields = {"product": "synthetic", "id": "a.png", "label": "good", "flagged": True, "score": 1.0}
    fields.update(threshold=0.5, model_version="abc.t0", reviewer="r")
    fields.update(overrides)
    return Label(**fields)


@needs_redis
def test_the_index_lists_products_and_the_queue_status(station, redis_server, stream_cfg):
    from ear_stream.stream import queue as q

    q.push(q.connect(redis_server.url), "synthetic", b"\x89PNG not really", "waiting-1", None, q.StreamConfig())
    served = station(redis_url=redis_server.url)
    status, page, _ = call(f"{served.url}/")
    text = page.decode()
    assert status == 200 and 'href="/p/synthetic"' in text
    assert "Input stream: 1 waiting" in " ".join(text.split())
    unreachable = station(redis_url="redis://127.0.0.1:1/0")  # the page still works; it says why
    assert "Redis:" in call(f"{unreachable.url}/")[1].decode()
