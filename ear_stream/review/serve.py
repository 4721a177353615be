"""The station served from a background thread (tests, the screenshot tool): start, use, stop cleanly."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from .config import ReviewConfig, host_header
from .guard import CSRF_HEADER, JSON_TYPE


class BackgroundStation:
    """uvicorn in a daemon thread on ``cfg.host:cfg.port``; a context manager that waits until it listens."""

    def __init__(self, cfg: ReviewConfig) -> None:
        import uvicorn

        from .app import build_app

        self.cfg = cfg
        self.url = f"http://{host_header(cfg.host)}:{cfg.port}"
        app, self.station = build_app(cfg)
        config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="review-station", daemon=True)

    def __enter__(self) -> BackgroundStation:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the review station did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def headers(self) -> dict[str, str]:
        """What a state change must carry to pass the guard, as the station's own page sends it."""
        return {"content-type": JSON_TYPE, "origin": self.url, CSRF_HEADER: self.station.csrf_token}

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``path`` as the station's own page would (an in-process client: tests, tools)."""
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), self.headers())  # noqa: S310
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - the loopback station
            return json.loads(response.read())
