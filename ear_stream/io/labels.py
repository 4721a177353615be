"""Reviewed labels as Parquet (docs/design.md, "Labels"): what a person confirmed about a verdict.

``LABELS/product=P/label-<time>-<random>.parquet``, one small part per review
decision, written atomically (:func:`~ear_stream.io.results.write_table_atomic`),
so a crash loses at most the click in flight and never leaves half a file. The
store is append-only; reading keeps the **latest** decision per (product, id), so
sending the same decision twice, or changing one's mind, leaves exactly one label
per item — idempotent per (product, id) as the review station and ``threshold
--labels`` need.

Each label carries what the verdict was (score, threshold, flagged, model
version), so a threshold can be chosen from reviewed items without rescoring:
scores are comparable across threshold revisions of the same weights
(``model_version`` = ``<weights hash>.t<revision>``), never across weights.

As in a results tree, ``product`` lives in the path only (:data:`LABEL_FILE_SCHEMA`): a
column inside the files as well would clash with the hive partition (string vs dictionary)
and pandas, Polars and DuckDB could not open the tree. Parts written before still read here.
A part that cannot be read (a 0-byte file a full disk left) is skipped with a warning.

A confirmed defect may carry its region (:class:`Mask`): a single-channel PNG, 255 inside the defect and
0 elsewhere, kept in the same part as its label (``mask``, ``mask_width``, ``mask_height``), so label and
mask are written together or not at all. Labels from another QA system (``ear-stream labels import``)
are stored the same way, many in one part, without the verdict columns (null: they judged no verdict of
ours, so no threshold is ever chosen from their scores).
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from .limits import DEFAULT_MAX_PIXELS
from .results import UTC_MS, safe_component, write_table_atomic

#: what a reviewer can say of an item: a real defect, or a good part (a false alarm when it was flagged,
#: a correct pass when it was not); "skip" is not a label and is never stored
LABELS = ("defect", "good")
#: reviewed labels of each class (defects, good parts) that an ``f1`` threshold from review needs (the
#: review page's Apply, ``threshold --labels``): with fewer, one click moves the threshold to wherever the
#: last item happened to score
MIN_LABELS_PER_CLASS = 10
#: a mask pixel at or above this grey level (or alpha, for a mask drawn on a transparent layer) is defect
MASK_THRESHOLD = 128
#: the largest mask PNG accepted: a binary mask of the largest image accepted compresses far below this
MAX_MASK_BYTES = 64 * 1024 * 1024
#: the first bytes of every PNG
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABEL_SCHEMA = pa.schema(
    [
        ("product", pa.string()),
        ("id", pa.string()),
        ("label", pa.string()),
        ("flagged", pa.bool_()),  # the verdict the label judges: is_anomaly of the result row
        ("score", pa.float32()),
        ("threshold", pa.float32()),
        ("model_version", pa.string()),
        ("reviewer", pa.string()),
        ("reviewed_at", UTC_MS),
        # the brushed defect region (a :class:`Mask`), null without one; parts of before read with these null
        ("mask", pa.binary()),
        ("mask_width", pa.int32()),
        ("mask_height", pa.int32()),
    ]
)
#: the columns :meth:`LabelStore.read` returns unless asked for the masks' bytes
LABEL_COLUMNS_NO_MASK = [name for name in LABEL_SCHEMA.names if name != "mask"]
#: what a label part holds: every column but ``product``, which its folder (``product=P``) gives
LABEL_FILE_SCHEMA = pa.schema([f for f in LABEL_SCHEMA if f.name != "product"])
#: the hive partition key of the labels tree
LABEL_PARTITIONING = pa.schema([LABEL_SCHEMA.field("product")])
log = logging.getLogger(__name__)


def weights_of(model_version: str | None) -> str:
    """The weights part of a model version (``<hash>.t<revision>`` → ``<hash>``): what makes scores comparable."""
    return (model_version or "").split(".t", 1)[0]


def check_product(product: str) -> str:
    """``product``, when a folder name holds it exactly (the ``product=P`` folder is the only place it is kept)."""
    if not product or safe_component(product) != product or product.startswith("."):
        # a leading dot is kept for a models folder's own entries (``.candidates``, ``.versions``)
        raise ConfigError(f"a product name is 1-100 of A-Z a-z 0-9 . _ - (not starting with .), got {product!r}")
    return product


@dataclass(frozen=True)
class Label:
    """One decision about one item. The verdict it judged (``flagged``, ``score``, ``threshold``,
    ``model_version``) is None for a label imported from another QA system: it judged no verdict of ours."""

    product: str
    id: str
    label: str
    flagged: bool | None = None
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    reviewer: str = ""

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ConfigError(f"a label is one of {', '.join(LABELS)}, got {self.label!r}")
        if not self.product or not self.id:
            raise ConfigError("a label needs a product and an id")


@dataclass(frozen=True)
class Mask:
    """A defect's region: a single-channel PNG, 255 inside the defect and 0 elsewhere, of ``width`` × ``height``.

    Built with :meth:`from_png` from whatever PNG a person or a QA system drew (grey, colour, 16-bit,
    palette, or a brush stroke on a transparent layer), so every stored mask is binary and reads the same.
    """

    png: bytes
    width: int
    height: int

    @classmethod
    def from_png(cls, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Mask:
        """Validate and normalise a drawn mask: thresholded at :data:`MASK_THRESHOLD`; refused (ConfigError,
        with the reason) when it is not a PNG, too large, or marks no pixel."""
        if len(data) > MAX_MASK_BYTES:
            raise ConfigError(f"a mask PNG is at most {MAX_MASK_BYTES} bytes, this one is {len(data)}")
        if not data.startswith(PNG_SIGNATURE):
            raise ConfigError(f"a mask is a PNG image (first bytes {data[:8]!r})")
        try:
            with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ConfigError(f"a mask is at most {max_pixels} pixels, this one is {width}x{height}")
                binary = _coverage(img).point([0] * MASK_THRESHOLD + [255] * (256 - MASK_THRESHOLD))
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ConfigError(f"the mask PNG cannot be read: {exc}") from exc
        if binary.histogram()[255] == 0:
            raise ConfigError(f"the mask marks no pixel (none at grey level {MASK_THRESHOLD} or above)")
        out = io.BytesIO()
        binary.save(out, format="PNG")
        return cls(out.getvalue(), width, height)

    @classmethod
    def of_row(cls, row: dict) -> Mask | None:
        """The mask of a row :meth:`LabelStore.read` returned with ``masks=True`` (None without one)."""
        if not row.get("mask"):
            return None
        return cls(bytes(row["mask"]), int(row["mask_width"]), int(row["mask_height"]))

    def array(self) -> np.ndarray:
        """The mask as a bool array [height, width], True inside the defect."""
        with Image.open(io.BytesIO(self.png), formats=("PNG",)) as img:
            return np.asarray(img.convert("L")) >= MASK_THRESHOLD

    @property
    def area(self) -> int:
        """Pixels inside the defect."""
        return int(self.array().sum())


def _coverage(img: Image.Image) -> Image.Image:
    """One grey channel of a drawn mask: its alpha when it has transparency (a brush stroke on a clear
    layer), else its grey level; 16-bit grey is scaled to 8 bits rather than clipped."""
    if img.has_transparency_data:
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.histogram()[255] < alpha.width * alpha.height:  # not all opaque: the alpha is what was drawn
            return alpha
    if img.mode.startswith("I"):
        return Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    return img.convert("L")


class LabelStore:
    """Append-only labels under one folder (local: labels are written by one review station at a time)."""

    def __init__(self, root: str | Path) -> None:
        if "://" in str(root):
            raise ConfigError(f"labels are kept in a local folder, not {root}: pass --labels DIR")
        self.root = Path(root)

    def add(self, label: Label, mask: Mask | None = None) -> Path:
        """Store one decision (and the defect's region, when brushed) durably; returns the part written."""
        return self.add_many([label], [mask])

    def add_many(self, labels: Sequence[Label], masks: Sequence[Mask | None] | None = None) -> Path:
        """Store decisions about one product as one part: all of them or none (an import of many rows)."""
        if not labels:
            raise ConfigError("no labels to store")
        products = {label.product for label in labels}
        if len(products) > 1:
            raise ConfigError(f"one part holds labels of one product, got {', '.join(sorted(products))}")
        product = check_product(labels[0].product)
        masks = [None] * len(labels) if masks is None else list(masks)
        if len(masks) != len(labels):
            raise ConfigError(f"{len(masks)} masks for {len(labels)} labels")
        now = datetime.now(timezone.utc)
        rows = []
        for label, mask in zip(labels, masks, strict=True):
            if mask is not None and label.label != "defect":
                raise ConfigError(f"a mask marks a defect's region; {label.id!r} is labelled {label.label!r}")
            rows.append(
                {
                    **label.__dict__,
                    "reviewed_at": now,
                    "mask": None if mask is None else mask.png,
                    "mask_width": None if mask is None else mask.width,
                    "mask_height": None if mask is None else mask.height,
                }
            )
        table = pa.Table.from_pylist(rows, schema=LABEL_FILE_SCHEMA)
        name = f"label-{time.time_ns():019d}-{secrets.token_hex(4)}.parquet"
        return write_table_atomic(table, self.root / f"product={product}" / name)

    def read(self, product: str | None = None, masks: bool = False) -> pa.Table:
        """The latest label per (product, id), optionally of one product; the masks' PNG bytes (``mask``)
        only with ``masks`` (``mask_width``/``mask_height`` always say which labels have one)."""
        files = sorted(self.root.rglob("label-*.parquet")) if self.root.is_dir() else []
        table = self._read_parts(files, LABEL_SCHEMA.names if masks else LABEL_COLUMNS_NO_MASK)
        if product is not None:
            table = table.filter(ds.field("product") == product)
        if table.num_rows == 0:
            return table
        products = table["product"].to_numpy(zero_copy_only=False)
        ids = table["id"].to_numpy(zero_copy_only=False)
        when = table["reviewed_at"].cast(pa.int64()).to_numpy(zero_copy_only=False)
        order = np.lexsort((np.arange(len(ids)), when, ids, products))  # file order breaks ties in time
        last = np.r_[(ids[order][1:] != ids[order][:-1]) | (products[order][1:] != products[order][:-1]), True]
        return table.take(np.sort(order[last]))

    def _read_parts(self, files: list[Path], columns: list[str]) -> pa.Table:
        """Every row of ``files`` (product from the folder), leaving out parts that cannot be read."""
        if not files:
            return LABEL_SCHEMA.empty_table().select(columns)
        try:
            return self._dataset(files).to_table(columns=columns)
        except (pa.ArrowException, OSError):  # one bad part: find it rather than lose every label
            readable = [f for f in files if self._readable(f)]
            if len(readable) == len(files):
                raise
        return self._read_parts(readable, columns)

    def _readable(self, path: Path) -> bool:
        """Whether a part reads as a label part; a warning names each one that does not (it is left out)."""
        try:
            self._dataset([path]).to_table()
        except (pa.ArrowException, OSError) as exc:
            log.warning("skipping unreadable label part %s: %s", path, exc)
            return False
        return True

    def _dataset(self, files: list[Path]) -> ds.Dataset:
        # parts of before (``product`` inside as well) hold the same value as their folder
        return ds.dataset(
            [str(f) for f in files],
            format="parquet",
            schema=LABEL_SCHEMA,
            partitioning=ds.partitioning(LABEL_PARTITIONING, flavor="hive"),
            partition_base_dir=str(self.root),
        )

    def scores_for(self, model_version: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(scores, labels True = defect, n_other) of the items judged by the same weights as ``model_version``.

        ``n_other`` counts labels of other weights: their scores are not comparable, so they are left out.
        """
        return comparable(self.read().to_pylist(), model_version)


def comparable(labels: list[dict], model_version: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, labels True = defect, n_other) of the label rows judged by the weights of ``model_version``.

    ``n_other`` counts rows of other weights: their scores are not comparable, so they are left out; so are
    rows without a score (labels imported from another QA system judged no verdict of ours).
    """
    same = [
        row
        for row in labels
        if row["score"] is not None and weights_of(row["model_version"]) == weights_of(model_version)
    ]
    scores = np.array([row["score"] for row in same], dtype=np.float64)
    defect = np.array([row["label"] == "defect" for row in same], dtype=bool)
    return scores, defect, len(labels) - len(same)
