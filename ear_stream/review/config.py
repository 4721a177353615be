"""Every option of the review station, defined once (the ``review`` verb's click options read these defaults)."""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io.keeping import SAMPLE_SEED

#: names of this machine's loopback interface, as a browser may put them in a Host header
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: addresses that mean "every interface"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: only this machine can reach the page."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def login_name() -> str:
    """Who is at the keyboard, for labels and the threshold history when no ``--reviewer`` is given."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def host_header(name: str) -> str:
    """``name`` as a Host header writes it (IPv6 literals in brackets), lower case."""
    name = name.lower()
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


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
    #: ``<folder>/<id>``, ``<folder>/<product>/<id>``); nothing outside them is ever served, and only
    #: raster images (PNG, JPEG, BMP, TIFF, WebP) whose content matches their name
    images: tuple[Path, ...] = ()
    #: image stores (``--keep-images`` of the line: folders or URIs) a row's ``image_uri`` is read from by
    #: its key; none: the store the URI names
    image_stores: tuple[str, ...] = ()
    #: Redis URL for the queue status line (optional)
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    #: required when the host is not loopback (one is generated then if not given)
    token: str | None = None
    #: further names the station is reached under (``--allow-host``: a DNS name or address behind
    #: ``--host 0.0.0.0``); any other Host header is refused, so a DNS name rebound to this machine gets nothing
    allowed_hosts: tuple[str, ...] = ()
    #: share of passed items put in the queue as well, to find escapes (drawn per item, stable across reloads)
    passed_sample: float = 0.05
    #: the sample's seed; the line's ``--keep-passed`` draws with the same one, so its kept passed items are
    #: within this sample whenever ``passed_sample`` is at least ``--keep-passed``
    seed: int = SAMPLE_SEED
    #: who the labels name (default: the login name)
    reviewer: str | None = None
    #: labels of each class (defect, good part) judged by the current weights before Apply may change a
    #: threshold; None = ``io.labels.MIN_LABELS_PER_CLASS`` (resolved here: the CLI's --help stays light)
    min_labels_per_class: int | None = None

    def __post_init__(self) -> None:
        self.results = Path(self.results)
        if not 0.0 <= self.passed_sample <= 1.0:
            raise ConfigError(f"--passed-sample is a share between 0 and 1, got {self.passed_sample}")
        if self.min_labels_per_class is None:
            from ..io.labels import MIN_LABELS_PER_CLASS

            self.min_labels_per_class = MIN_LABELS_PER_CLASS
        if self.min_labels_per_class < 1:
            raise ConfigError(f"a threshold needs at least one label of each class, got {self.min_labels_per_class}")
        if self.labels is None:
            self.labels = self.results.with_name(self.results.name + "-labels")
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"serving on {self.host} exposes the station: give it a --token")
        self.images = tuple(Path(p).resolve() for p in self.images)
        self.image_stores = tuple(str(s) for s in self.image_stores)

    def host_headers(self) -> frozenset[str]:
        """Every Host header the station answers (``name:port``; the bare name too on port 80).

        The bound address, the loopback names when it is loopback, this machine's names and addresses
        when it listens on every interface, and ``allowed_hosts``.
        """
        names = {self.host, *self.allowed_hosts}
        if is_loopback(self.host) or self.host in WILDCARD_HOSTS:
            names.update(LOOPBACK_NAMES)
        if self.host in WILDCARD_HOSTS:
            names.update(_machine_names())
        names.discard("")
        headers = {f"{host_header(n)}:{self.port}" for n in names}
        if self.port == 80:
            headers.update(host_header(n) for n in names)
        return frozenset(headers)


def _machine_names() -> set[str]:
    """This machine's host name, full name and addresses (what a browser on the network may call it)."""
    names = {socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):  # a host name that does not resolve: its names alone
        names.update(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    return names
