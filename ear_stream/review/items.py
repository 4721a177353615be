"""What the station shows: per product, a queue of flagged items and a stable sample of passed ones.

Read from the results tree (de-duplicated as :func:`~ear_stream.io.results.read_results` does) and
joined with the labels already given, so a reload shows only what is still to review. A part file
that cannot be read (a 0-byte part a full disk left) is skipped with a warning, not a 500.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..inspect.thresholds import class_counts, f1_optimal, operating_point
from ..io.keeping import in_passed_sample
from ..io.labels import LabelStore, comparable
from ..io.limits import MAX_KEPT_IMAGE_BYTES
from ..io.results import is_uri, read_results
from ..io.store import BlobStore, StoreError, redacted

#: what ``--images`` may serve, by suffix: raster images only, each as its own media type. Never SVG, HTML
#: or anything else a browser would run as active content on the station's origin
RASTER_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
}
#: the suffixes tried after an id: as it is (when it names a raster file), then each raster suffix
CANDIDATE_SUFFIXES = ("", *RASTER_TYPES)
#: the first bytes of each media type: a file is served only when its content is what its name says
MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/bmp": (b"BM",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "image/webp": (b"RIFF",),  # and "WEBP" at byte 8 (:func:`raster_type`)
}
log = logging.getLogger(__name__)


#: (was flagged, confirmed a defect) → what the review found
OUTCOMES = {
    (True, True): "confirmed",
    (True, False): "false_alarms",
    (False, True): "escapes",
    (False, False): "good_passes",
}


def item_key(product: str, ident: str) -> str:
    """A URL-safe key for an item (ids are paths or stream ids: slashes, spaces, anything)."""
    return hashlib.sha1(f"{product}\0{ident}".encode()).hexdigest()[:20]


@dataclass
class Item:
    key: str
    id: str
    score: float
    threshold: float
    flagged: bool
    model_version: str
    processed_at: str
    regions: list[dict[str, Any]]
    frame_check: str | None
    has_heatmap: bool
    path: str | None  # the meta's path, when ``score`` wrote it
    kept: bool = False  # whether the line kept its original image (``image_uri``)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class ProductView:
    """One product's rows, queue and counts (rebuilt from disk on every page load)."""

    def __init__(self, product: str, table: pa.Table, labels: pa.Table, share: float, seed: int) -> None:
        self.product = product
        self.rows: dict[str, dict[str, Any]] = {}
        self.items: dict[str, Item] = {}
        for row in table.to_pylist():
            key = item_key(product, row["id"])
            self.rows[key] = row
            self.items[key] = _item(key, row)
        self.labels = {item_key(product, r["id"]): r for r in labels.to_pylist()}
        self.queue = [
            it
            for it in sorted(self.items.values(), key=lambda it: (not it.flagged, -it.score))
            if it.key not in self.labels and (it.flagged or in_passed_sample(product, it.id, share, seed))
        ]

    def record(self, key: str, label: dict[str, Any]) -> None:
        """A label just stored: counted, and the item leaves the queue."""
        self.labels[key] = label
        self.queue = [it for it in self.queue if it.key != key]

    def counts(self) -> dict[str, int]:
        """Live counts of what people confirmed: defects caught, false alarms, escapes found, good passes."""
        out = {"results": len(self.items), "flagged": sum(it.flagged for it in self.items.values()), "to_review": 0}
        out.update(reviewed=len(self.labels), confirmed=0, false_alarms=0, escapes=0, good_passes=0)
        for lab in self.labels.values():
            out[OUTCOMES[(bool(lab["flagged"]), lab["label"] == "defect")]] += 1
        out["to_review"] = len(self.queue)
        return out

    def threshold_view(self, model_version: str | None, threshold: float | None) -> dict[str, Any]:
        """The operating point of the current threshold on the reviewed items, and the F1-optimal proposal.

        Only labels judged by the current weights count (scores of other weights are not comparable).
        The reviewed items over-represent flagged ones (every flagged item, a sample of passed ones):
        the rates describe the reviewed items, not the line.
        """
        scores, labels, _ = comparable(list(self.labels.values()), model_version)
        view: dict[str, Any] = {"model_version": model_version, "reviewed_same_weights": int(labels.size)}
        view["labels"] = class_counts(labels)
        if threshold is not None and labels.size:
            view["current"] = operating_point(scores, labels, threshold)
        if labels.any() and not labels.all():
            proposed, f1 = f1_optimal(scores, labels)
            view["proposed"] = {**operating_point(scores, labels, proposed), "f1": f1}
        return view


def _item(key: str, row: dict[str, Any]) -> Item:
    meta = {}
    if row.get("meta"):
        try:
            meta = json.loads(row["meta"])
        except ValueError:
            meta = {}
    return Item(
        key=key,
        id=row["id"],
        score=float(row["score"]),
        threshold=float(row["threshold"]),
        flagged=bool(row["is_anomaly"]),
        model_version=row["model_version"] or "",
        processed_at=row["processed_at"].isoformat() if row.get("processed_at") else "",
        regions=list(row.get("regions") or []),
        frame_check=row.get("frame_check"),
        has_heatmap=bool(row.get("heatmap")),
        path=meta.get("path") if isinstance(meta, dict) else None,
        kept=bool(row.get("image_uri")),
    )


class ResultsView:
    """The results tree and the label store, read per request that needs them."""

    def __init__(self, results: Path, labels: LabelStore, share: float, seed: int) -> None:
        self.results, self.store, self.share, self.seed = results, labels, share, seed

    def products(self) -> dict[str, dict[str, int]]:
        table = readable_results(self.results)
        names = sorted(set(table["product"].to_pylist())) if table.num_rows else []
        labels = self.store.read()  # once for every product
        return {name: self.product(name, table, labels).counts() for name in names}

    def product(self, product: str, table: pa.Table | None = None, labels: pa.Table | None = None) -> ProductView:
        table = readable_results(self.results) if table is None else table
        labels = self.store.read() if labels is None else labels
        if table.num_rows:
            table = table.filter(pc.equal(table["product"], product))
        if labels.num_rows:
            labels = labels.filter(pc.equal(labels["product"], product))
        return ProductView(product, table, labels, self.share, self.seed)


def find_image(roots: tuple[Path, ...], product: str, item: Item) -> tuple[Path, str] | None:
    """(path, media type) of an item's original image, only from inside the configured folders (never any
    other path) and only a raster image whose content matches its name."""
    candidates = [Path(c) for c in (item.path, item.id) if c and isinstance(c, str)]  # meta may hold anything
    for root in roots:
        candidates += [root / f"{item.id}{suffix}" for suffix in CANDIDATE_SUFFIXES]
        candidates += [root / product / f"{item.id}{suffix}" for suffix in CANDIDATE_SUFFIXES]
    for cand in candidates:
        try:
            path = cand.resolve()
            media = raster_type(path) if any(path.is_relative_to(root) for root in roots) else None
        except (OSError, RuntimeError):
            continue
        if media is not None:
            return path, media
    return None


#: the largest original image the station serves from --images (a 40 M-pixel 8-bit RGB TIFF is ~120 MB)
MAX_SERVED_BYTES = 256 * 1024 * 1024


def read_inside(path: Path, roots: tuple[Path, ...], media: str) -> bytes | None:
    """The bytes of ``path``, read through one descriptor that is checked to be a regular file inside ``roots``
    whose bytes are still ``media``: a file swapped for a symlink (or another file) after :func:`find_image`
    checked it is never served (red team: a swap loop leaked /etc/passwd as image/png)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SERVED_BYTES:
            return None
        try:  # where the descriptor really points (every component resolved by the kernel at open time)
            real = Path(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        except OSError:
            real = path.resolve()
        if not any(real.is_relative_to(root.resolve()) for root in roots):
            return None
        data = f.read(MAX_SERVED_BYTES + 1)
    return data if len(data) <= MAX_SERVED_BYTES and content_matches(data[:12], media) else None


def raster_type(path: Path) -> str | None:
    """The media type of a raster image file by its suffix, when its first bytes agree (None otherwise)."""
    media = RASTER_TYPES.get(path.suffix.lower())
    if media is None or not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(12)
    return media if content_matches(head, media) else None


def content_matches(head: bytes, media: str) -> bool:
    """Whether the first bytes of a file or blob are those of ``media`` (the check before anything is served)."""
    return head.startswith(MAGIC[media]) and (media != "image/webp" or head[8:12] == b"WEBP")


class KeptImages:
    """Images the line kept (``image_uri``, :mod:`ear_stream.io.keeping`), read through :class:`BlobStore.get`.

    A row's URI is resolved by its key in each ``--image-store`` given (copies of the store), else in the
    store the URI names. What comes back is verified against its sha256 by the store and served only as the
    raster type its key's ending names, when its first bytes agree (never SVG, HTML or anything else).
    """

    def __init__(self, stores: tuple[str, ...] = ()) -> None:
        self.stores = stores
        self._open: dict[str, BlobStore] = {}

    def read(self, uri: str | None) -> tuple[bytes, str] | None:
        """(bytes, media type) of a kept image, or None (not kept, pruned, corrupt, unreachable, not raster)."""
        if not uri:
            return None
        media = RASTER_TYPES.get(Path(uri.split("?", 1)[0]).suffix.lower())
        if media is None:
            return None
        for location in self.stores or (uri.rsplit("/", 2)[0],):
            try:
                data = self._store(location).get(uri, max_bytes=MAX_KEPT_IMAGE_BYTES)
            except StoreError as exc:
                log.debug("kept image %s not read from %s: %s", uri, redacted(location), exc)
                continue
            if content_matches(data[:12], media):
                return data, media
        return None

    def _store(self, location: str) -> BlobStore:
        if location not in self._open:
            self._open[location] = BlobStore(location)
        return self._open[location]


def readable_results(results: Path) -> pa.Table:
    """The results tree as :func:`read_results` reads it, less the part files that cannot be read.

    The common case is one read. When it fails, each part is tried alone; the bad ones are named in a
    warning and the tree is read again without them (through links in a temporary folder, so the
    partition values still come from the paths).
    """
    try:
        return read_results(results)
    except (pa.ArrowException, OSError):
        if is_uri(results):
            raise
        parts = sorted(Path(results).rglob("part-*.parquet"))
        good = [p for p in parts if _readable_part(p)]
        if len(good) == len(parts):
            raise
    with tempfile.TemporaryDirectory(prefix="ear-review-") as tmp:
        for part in good:
            link = Path(tmp) / part.relative_to(results)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(part.resolve(), link)
        return readable_results(Path(tmp))


def _readable_part(path: Path) -> bool:
    try:
        pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        log.warning("skipping unreadable results part %s: %s", path, exc)
        return False
    return True
