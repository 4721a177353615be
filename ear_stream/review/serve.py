"""The station served from a background thread (tests, the screenshot tool): start, use, stop cleanly."""

from __future__ import annotations

import threading
import time

from .config import ReviewConfig


class BackgroundStation:
    """uvicorn in a daemon thread on ``cfg.host:cfg.port``; a context manager that waits until it listens."""

    def __init__(self, cfg: ReviewConfig) -> None:
        import uvicorn

        from .app import create_app

        self.cfg = cfg
        self.url = f"http://{cfg.host}:{cfg.port}"
        config = uvicorn.Config(create_app(cfg), host=cfg.host, port=cfg.port, log_level="error")
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
