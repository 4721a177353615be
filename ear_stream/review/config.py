"""Every option of the review station, defined once (the ``review`` verb's click options read these defaults)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: only this machine can reach the page."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ReviewConfig:
    """Where the station reads and writes, and who may reach it."""

    #: the results tree the workers or ``score`` wrote
    results: Path
    #: where labels go; None = ``<results>-labels`` next to the results tree (outside it, so readers of the
    #: tree never meet a file of another schema)
    labels: Path | None = None
    #: MODELS_DIR (``<product>/manifest.json``): the current thresholds, and where a new one is written
    models: Path | None = None
    #: folders the original images may be served from (an id that is a path under one of them, or
    #: ``<folder>/<id>``, ``<folder>/<product>/<id>``); nothing outside them is ever served
    images: tuple[Path, ...] = ()
    #: Redis URL for the queue status line (optional)
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    #: required when the host is not loopback (one is generated then if not given)
    token: str | None = None
    #: share of passed items put in the queue as well, to find escapes (drawn per item, stable across reloads)
    passed_sample: float = 0.05
    seed: int = 0
    #: who the labels name (default: the login name)
    reviewer: str | None = None

    def __post_init__(self) -> None:
        self.results = Path(self.results)
        if not 0.0 <= self.passed_sample <= 1.0:
            raise ConfigError(f"--passed-sample is a share between 0 and 1, got {self.passed_sample}")
        if self.labels is None:
            self.labels = self.results.with_name(self.results.name + "-labels")
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"serving on {self.host} exposes the station: give it a --token")
        self.images = tuple(Path(p).resolve() for p in self.images)
