"""Only the station's own pages drive it: Host, Origin, JSON, CSRF, headers, raster images only, escaping.

A real uvicorn on a free loopback port, attacked the way a page on another origin (another port of localhost,
a DNS name rebound to 127.0.0.1) or a hostile results part would.
"""

from __future__ import annotations

import http.client
import json
import logging

import pytest
from hostile import EVIL_VERSION, NOT_IMAGES, PRODUCT, WIDE, write_hostile_line

from ear_stream.io.labels import LabelStore
from ear_stream.review.config import ReviewConfig
from ear_stream.review.guard import CONTENT_SECURITY_POLICY
from ear_stream.review.serve import BackgroundStation
from ear_stream.stream.redis_server import free_port

LABEL = f"/api/p/{PRODUCT}/label"


@pytest.fixture
def hostile(tmp_path):  # type: ignore[no-untyped-def]
    """Start stations on the hostile line: ``hostile(**overrides)``; returns (station, the line's folders)."""
    folders = write_hostile_line(tmp_path)
    started: list[BackgroundStation] = []

    def start(**overrides) -> BackgroundStation:  # type: ignore[no-untyped-def]
        options = {"results": folders["results"], "images": (folders["images"],), "port": free_port()}
        cfg = ReviewConfig(**{**options, "passed_sample": 1.0, "reviewer": "<b>rev</b>", **overrides})
        started.append(BackgroundStation(cfg).__enter__())
        return started[-1]

    yield start, folders
    for served in started:
        served.__exit__(None, None, None)


def request(served, method: str, path: str, body: bytes | None = None, **headers: str):  # type: ignore[no-untyped-def]
    """(status, body, headers) of one request with exactly these headers (Host included when given)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.cfg.port, timeout=30)
    try:
        conn.request(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def first_key(served) -> str:  # type: ignore[no-untyped-def]
    status, body, _ = request(served, "GET", f"/api/p/{PRODUCT}")
    assert status == 200, body
    return json.loads(body)["queue"][0]["key"]


def test_state_changes_need_the_own_origin_json_and_the_csrf_token(hostile):
    start, folders = hostile
    served = start()
    body = json.dumps({"key": first_key(served), "label": "defect"}).encode()
    own, csrf = served.url, served.station.csrf_token
    other = f"http://127.0.0.1:{free_port()}"  # a page on another port: same site, another origin
    ok = {"content_type": "application/json", "x_csrf_token": csrf}
    cases = [
        (403, {**ok, "origin": other}),  # cross-origin
        (403, {**ok, "origin": "null"}),  # a sandboxed frame, a data: URL
        (403, {**ok, "referer": other + "/p/tiles"}),  # no Origin: the Referer's origin counts
        (403, ok),  # neither Origin nor Referer
        (415, {**ok, "origin": own, "content_type": "text/plain"}),  # a "simple" request: no preflight
        (415, {**ok, "origin": own, "content_type": "application/x-www-form-urlencoded"}),
        (403, {"content_type": "application/json", "origin": own}),  # no CSRF token
        (403, {"content_type": "application/json", "origin": own, "x_csrf_token": csrf[:-1] + "x"}),
    ]
    for expected, headers in cases:
        status, answer, _ = request(served, "POST", LABEL, body, **headers)
        assert status == expected, (headers, answer)
    assert LabelStore(folders["labels"]).read().num_rows == 0
    # the threshold route too, body or none: nothing happens without the same checks
    assert request(served, "POST", f"/api/p/{PRODUCT}/threshold")[0] == 403
    assert request(served, "POST", f"/api/p/{PRODUCT}/threshold", b"{}", origin=other, **ok)[0] == 403
    # the station's own page (Origin, or only a same-origin Referer) gets through
    assert request(served, "POST", LABEL, body, referer=own + "/p/tiles", **ok)[0] == 200
    assert request(served, "POST", LABEL, body, origin=own, **ok)[0] == 200
    assert LabelStore(folders["labels"]).read().num_rows == 1


def test_only_the_stations_own_host_names_are_answered(hostile):
    start, _ = hostile
    served = start()
    port = served.cfg.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert request(served, "GET", "/", host=host)[0] == 200, host
    for host in (f"attacker.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", "", f"evil.localhost:{port}"):
        assert request(served, "GET", "/", host=host)[0] == 400, host
        assert request(served, "GET", f"/api/p/{PRODUCT}", host=host)[0] == 400, host
    # a DNS name rebound to 127.0.0.1: the attacker's page is same-origin with its own name, refused by Host
    rebound = f"attacker.example:{port}"
    headers = {"host": rebound, "origin": f"http://{rebound}", "content_type": "application/json"}
    status, _, _ = request(served, "POST", LABEL, b"{}", x_csrf_token=served.station.csrf_token, **headers)
    assert status == 400
    named = start(allowed_hosts=("line3.example",))  # --allow-host: another name it is reached under
    assert request(named, "GET", "/", host=f"line3.example:{named.cfg.port}")[0] == 200


def test_with_a_token_the_cookie_alone_changes_nothing(hostile):
    start, folders = hostile
    served = start(token="k3y")
    status, _, head = request(served, "GET", "/?token=k3y")
    assert status == 200 and "HttpOnly" in head["set-cookie"] and "SameSite=Strict" in head["set-cookie"]
    cookie = head["set-cookie"].split(";")[0]
    status, body, _ = request(served, "GET", f"/api/p/{PRODUCT}", cookie=cookie)
    key = json.loads(body)["queue"][0]["key"]
    label = json.dumps({"key": key, "label": "good"}).encode()
    other = f"http://localhost:{free_port()}"  # the browser sends the cookie from another port of the same site
    json_type = {"content_type": "application/json"}
    assert request(served, "POST", LABEL, label, cookie=cookie, origin=other, **json_type)[0] == 403
    assert request(served, "POST", LABEL, label, cookie=cookie, origin=served.url, **json_type)[0] == 403
    assert request(served, "POST", LABEL, label, origin=served.url, **json_type, x_csrf_token="x")[0] == 401
    assert LabelStore(folders["labels"]).read().num_rows == 0
    status, _, _ = request(served, "POST", LABEL, label, cookie=cookie, **served.headers())
    assert status == 200 and LabelStore(folders["labels"]).read().num_rows == 1


def test_every_response_carries_the_security_headers(hostile):
    start, _ = hostile
    served, gated = start(), start(token="k3y")
    answers = [
        request(served, "GET", "/"),
        request(served, "GET", f"/p/{PRODUCT}"),
        request(served, "GET", f"/api/p/{PRODUCT}"),
        request(served, "GET", "/static/review.js"),
        request(served, "GET", "/no/such/page"),
        request(served, "GET", "/", host="attacker.example"),
        request(served, "POST", LABEL, b"{}"),
        request(gated, "GET", "/"),
    ]
    assert [a[0] for a in answers] == [200, 200, 200, 200, 404, 400, 403, 401]
    for _, _, head in answers:
        assert head["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
        assert "img-src 'self' data:" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert head["x-content-type-options"] == "nosniff" and head["x-frame-options"] == "DENY"
        assert head["referrer-policy"] in ("no-referrer", "same-origin")


def test_only_raster_images_are_served_from_the_images_folders(hostile):
    start, _ = hostile
    served = start()
    queue = json.loads(request(served, "GET", f"/api/p/{PRODUCT}")[1])["queue"]
    keys = {item["id"]: item["key"] for item in queue}
    status, body, head = request(served, "GET", f"/p/{PRODUCT}/image/{keys[WIDE]}")
    assert status == 200 and head["content-type"] == "image/png" and body.startswith(b"\x89PNG")
    refused = [ident for ident in keys if ident != WIDE]
    assert len(refused) == len(NOT_IMAGES) + 1  # svg, html, HTML named .png, and an svg named by its path
    for ident in refused:
        status, body, head = request(served, "GET", f"/p/{PRODUCT}/image/{keys[ident]}")
        assert status in (404, 415) and b"<script" not in body, ident
        assert head["content-type"].startswith("text/plain"), ident


def test_strings_from_results_are_escaped_in_the_pages(hostile):
    start, _ = hostile
    served = start()
    page = request(served, "GET", f"/p/{PRODUCT}")[1].decode()
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert "\\u003cscript\\u003ewindow.__pwned" in page  # inside the JSON data block, escaped
    assert "&lt;b&gt;rev&lt;/b&gt;" in page and "<b>rev</b>" not in page  # the reviewer's name, as text
    assert page.count("<script") == 2  # the data block and the script file: nothing inline executes
    state = json.loads(request(served, "GET", f"/api/p/{PRODUCT}")[1])
    assert state["queue"][0]["model_version"] == EVIL_VERSION  # the data itself is kept as it was


def test_unreadable_parts_are_skipped_with_a_warning(hostile, caplog):
    start, folders = hostile
    served = start()
    key = first_key(served)
    assert served.post(LABEL, {"key": key, "label": "defect"})["counts"]["reviewed"] == 1
    day = next((folders["results"] / f"product={PRODUCT}").iterdir())
    empty_part, cut_label = "part-w9-0000000000000000001-000001.parquet", "label-0000000000000000001-dead.parquet"
    (day / empty_part).write_bytes(b"")  # a full disk's leftover
    (folders["labels"] / f"product={PRODUCT}" / cut_label).write_bytes(b"PAR1")
    with caplog.at_level(logging.WARNING):
        status, body, _ = request(served, "GET", f"/api/p/{PRODUCT}")
        assert status == 200, body
        assert json.loads(body)["counts"] == {**json.loads(body)["counts"], "results": 5, "reviewed": 1}
        assert request(served, "GET", "/")[0] == 200
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert empty_part in warned and cut_label in warned  # each skipped part named once it is left out
