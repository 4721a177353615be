"""The review station over HTTP: queue, labels in Parquet, the token, images only from --images, thresholds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_redis

from ear_stream.cli import main
from ear_stream.io.labels import LabelStore
from ear_stream.model.artifact import load_manifest, write_manifest


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


def post(served, path: str, body: dict, **headers: str) -> tuple[int, dict | bytes, dict]:  # type: ignore[no-untyped-def]
    """POST as the station's own page does (its Origin, JSON, its CSRF token)."""
    return call(served.url + path, body, {**served.headers(), **headers})


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
        status, after, _ = post(served, "/api/p/synthetic/label", {"key": first["key"], "label": "defect"})
        assert status == 200
    status, after, _ = post(served, "/api/p/synthetic/label", {"key": first["key"], "label": "good"})
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
    status, body, _ = post(served, "/api/p/synthetic/label", {"key": key, "label": "maybe"})
    assert status == 400 and "defect, good" in body["error"]
    status, body, _ = post(served, "/api/p/synthetic/label", {"key": "nope", "label": "good"})
    assert status == 404 and "unknown item" in body["error"]
    assert call(f"{served.url}/api/p/..%2Fetc")[0] == 404
    request = urllib.request.Request(f"{served.url}/api/p/synthetic/label", b"[1, 2]", served.headers())  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310 - a loopback test server
    assert err.value.code == 400 and b"JSON object" in err.value.read()
    assert LabelStore(line["labels"]).read().num_rows == 0


def test_images_come_from_the_configured_folders_only(station, line, tmp_path):
    served = station()
    item = call(f"{served.url}/api/p/synthetic")[1]["queue"][0]
    status, body, head = call(f"{served.url}/p/synthetic/image/{item['key']}")
    assert status == 200 and body[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1")
    assert head["content-type"].startswith("image/") and head["x-content-type-options"] == "nosniff"
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
    assert cookie.startswith(f"ear_review_token_{served.cfg.port}=")  # cookies ignore ports: one name per station
    assert call(f"{served.url}/api/p/synthetic", headers={"cookie": cookie})[0] == 200
    assert call(f"{served.url}/api/p/synthetic", headers={"authorization": "Bearer s3cret"})[0] == 200


def test_a_non_loopback_host_without_a_token_is_refused(line):
    from ear_stream.errors import ConfigError
    from ear_stream.review.config import ReviewConfig

    with pytest.raises(ConfigError, match="--token"):
        ReviewConfig(results=line["results"], host="0.0.0.0")
    assert ReviewConfig(results=line["results"], host="::1").labels == line["results"].with_name("results-labels")


def review_everything(served, truth: dict) -> dict:  # type: ignore[no-untyped-def]
    """Label every queued item with its ground truth; returns the last state."""
    state = call(f"{served.url}/api/p/synthetic")[1]
    for item in list(state["queue"]):
        label = "defect" if truth[item["id"]] else "good"
        state = post(served, "/api/p/synthetic/label", {"key": item["key"], "label": label})[1]
    return state


def set_held_out_scores(model, scores) -> None:  # type: ignore[no-untyped-def]
    """Give the model other held-out good scores (what the false-reject bound is measured on)."""
    manifest = load_manifest(model)
    manifest.calibration = {**manifest.calibration, "scores": [float(s) for s in scores]}
    write_manifest(model, manifest)


@pytest.fixture
def few_labels_station(station):  # type: ignore[no-untyped-def]
    """A station whose Apply takes the generated line's 6 good parts (the default asks for 10 of each class)."""
    return station(min_labels_per_class=3)


def test_apply_shows_the_proposal_and_changes_nothing_until_confirmed(few_labels_station, line):
    served = few_labels_station
    state = review_everything(served, line["truth"])
    counts, view = state["counts"], state["thresholds"]
    n_defects = sum(line["truth"].values())
    assert counts["confirmed"] + counts["escapes"] == n_defects
    assert view["current"]["defects"] == n_defects and view["reviewed_same_weights"] == len(line["truth"])
    assert view["labels"] == {"defects": n_defects, "good": len(line["truth"]) - n_defects}
    proposed = view["proposed"]
    assert (
        proposed["escapes"] + proposed["false_alarms"] <= view["current"]["escapes"] + view["current"]["false_alarms"]
    )
    model = line["models"] / "synthetic"
    set_held_out_scores(model, np.linspace(0.0, proposed["threshold"], 20))  # none above it: within the bound
    before = load_manifest(model)

    status, step, _ = post(served, "/api/p/synthetic/threshold", {})
    assert status == 200, step
    proposal = step["proposal"]
    assert proposal["threshold"] == pytest.approx(proposed["threshold"]) and proposal["policy"] == "f1"
    assert proposal["operating_point"]["false_alarms"] == proposed["false_alarms"]
    assert proposal["operating_point"]["escapes"] == proposed["escapes"]
    assert proposal["operating_point_before"] == view["current"]
    assert proposal["false_reject_rate_on_calibration"] == 0.0 and proposal["refused"] is None
    assert load_manifest(model).to_json() == before.to_json()  # a proposal writes nothing

    wrong = {"confirm": True, "threshold": proposal["threshold"] + 0.01, "model_version": before.model_version}
    status, body, _ = post(served, "/api/p/synthetic/threshold", wrong)
    assert status == 409 and "changed" in body["error"]
    assert load_manifest(model).threshold_revision == before.threshold_revision

    confirm = {"confirm": True, "threshold": proposal["threshold"], "model_version": before.model_version}
    status, applied, _ = post(served, "/api/p/synthetic/threshold", confirm)
    assert status == 200, applied
    after = load_manifest(model)
    assert after.threshold == pytest.approx(proposed["threshold"]) and after.threshold_policy == "f1"
    assert after.threshold_history[-1]["threshold"] == before.threshold  # history kept
    assert after.threshold_history[-1]["reviewer"] == "tester"  # who changed it
    assert after.model_version != before.model_version  # results show which revision judged them
    assert applied["thresholds"]["current"]["threshold"] == pytest.approx(after.threshold)
    assert applied["report"]["reviewer"] == "tester"

    # the same confirmation again: the proposal was for the revision before, refused
    assert post(served, "/api/p/synthetic/threshold", confirm)[0] == 409

    # and the change rolls back from a shell: a new revision with the earlier values, history kept
    result = CliRunner().invoke(main, ["threshold", str(model), "--rollback", "--reviewer", "ann"])
    assert result.exit_code == 0, result.output
    rolled = load_manifest(model)
    assert rolled.threshold == before.threshold and rolled.threshold_policy == before.threshold_policy
    assert rolled.threshold_revision == after.threshold_revision + 1 and len(rolled.threshold_history) == 2
    assert rolled.threshold_history[-1]["rollback_to"] == before.threshold_revision
    assert rolled.threshold_history[-1]["reviewer"] == "ann"


def test_apply_refuses_too_few_labels(station, line):
    served = station()  # the default minimum: 10 labels of each class; the line has 6 good parts
    review_everything(served, line["truth"])
    before = load_manifest(line["models"] / "synthetic")
    status, body, _ = post(served, "/api/p/synthetic/threshold", {})
    n_good = sum(not defect for defect in line["truth"].values())
    assert status == 409 and "at least 10 labels of each class" in body["error"]
    assert f"and {n_good} good parts" in body["error"]
    confirm = {"confirm": True, "threshold": 0.5, "model_version": before.model_version}
    status, body, _ = post(served, "/api/p/synthetic/threshold", confirm)
    assert status == 409 and "at least 10" in body["error"]
    assert load_manifest(line["models"] / "synthetic").to_json() == before.to_json()


def test_apply_refuses_a_threshold_that_rejects_too_many_good_images(few_labels_station, line):
    served = few_labels_station
    proposed = review_everything(served, line["truth"])["thresholds"]["proposed"]["threshold"]
    model = line["models"] / "synthetic"
    set_held_out_scores(model, np.full(20, proposed + 1.0))  # every held-out good image above it
    before = load_manifest(model)
    status, step, _ = post(served, "/api/p/synthetic/threshold", {})
    assert status == 200 and step["proposal"]["false_reject_rate_on_calibration"] == 1.0
    assert "rejects 100.0% of the model's held-out good images" in step["proposal"]["refused"]
    confirm = {"confirm": True, "threshold": step["proposal"]["threshold"], "model_version": before.model_version}
    status, body, _ = post(served, "/api/p/synthetic/threshold", confirm)
    assert status == 409 and "at most 20%" in body["error"] and "--force" not in body["error"]
    assert load_manifest(model).to_json() == before.to_json()


def test_threshold_cli_takes_the_reviewed_labels(station, line):
    review_everything(station(), line["truth"])
    model = line["models"] / "synthetic"
    args = ["threshold", str(model), "--policy", "f1", "--labels", str(line["labels"]), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "at least 10 labels of each class" in result.output
    result = CliRunner().invoke(main, [*args, "--min-labels", "3", "--force"])
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


def test_a_brushed_mask_travels_with_its_defect_label_and_bad_masks_are_refused(station, line):
    import base64
    import io

    from PIL import Image

    from ear_stream.io.labels import Mask

    served = station()
    key = call(f"{served.url}/api/p/synthetic")[1]["queue"][0]["key"]
    img = Image.new("L", (20, 10), 0)
    img.paste(255, (4, 2, 9, 6))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    for body, why in [
        ({"key": key, "label": "good", "mask": png}, "marks a defect"),
        ({"key": key, "label": "defect", "mask": "not base64!"}, "base64 PNG"),
        ({"key": key, "label": "defect", "mask": base64.b64encode(b"GIF89a").decode()}, "a PNG image"),
        ({"key": key, "label": "defect", "mask": 7}, "base64 PNG"),
    ]:
        status, answer, _ = post(served, "/api/p/synthetic/label", body)
        assert status == 400 and why in answer["error"], answer
    assert LabelStore(line["labels"]).read().num_rows == 0  # nothing half-stored
    status, _, _ = post(served, "/api/p/synthetic/label", {"key": key, "label": "defect", "mask": png})
    assert status == 200
    row = LabelStore(line["labels"]).read("synthetic", masks=True).to_pylist()[0]
    mask = Mask.of_row(row)
    assert mask is not None and (mask.width, mask.height) == (20, 10) and mask.area == 20
