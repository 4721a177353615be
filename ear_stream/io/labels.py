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
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from ..errors import ConfigError
from .results import UTC_MS, safe_component, write_table_atomic

#: what a reviewer can say of an item: a real defect, or a good part (a false alarm when it was flagged,
#: a correct pass when it was not); "skip" is not a label and is never stored
LABELS = ("defect", "good")
#: reviewed labels of each class (defects, good parts) that an ``f1`` threshold from review needs (the
#: review page's Apply, ``threshold --labels``): with fewer, one click moves the threshold to wherever the
#: last item happened to score
MIN_LABELS_PER_CLASS = 10
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
    ]
)
#: what a label part holds: every column but ``product``, which its folder (``product=P``) gives
LABEL_FILE_SCHEMA = pa.schema([f for f in LABEL_SCHEMA if f.name != "product"])
#: the hive partition key of the labels tree
LABEL_PARTITIONING = pa.schema([LABEL_SCHEMA.field("product")])
log = logging.getLogger(__name__)


def weights_of(model_version: str | None) -> str:
    """The weights part of a model version (``<hash>.t<revision>`` → ``<hash>``): what makes scores comparable."""
    return (model_version or "").split(".t", 1)[0]


@dataclass(frozen=True)
class Label:
    product: str
    id: str
    label: str
    flagged: bool
    score: float
    threshold: float
    model_version: str
    reviewer: str

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ConfigError(f"a label is one of {', '.join(LABELS)}, got {self.label!r}")
        if not self.product or not self.id:
            raise ConfigError("a label needs a product and an id")


class LabelStore:
    """Append-only labels under one folder (local: labels are written by one review station at a time)."""

    def __init__(self, root: str | Path) -> None:
        if "://" in str(root):
            raise ConfigError(f"labels are kept in a local folder, not {root}: pass --labels DIR")
        self.root = Path(root)

    def add(self, label: Label) -> Path:
        """Store one decision durably; returns the part written."""
        if safe_component(label.product) != label.product:  # the folder name is the only place it is kept
            raise ConfigError(f"a product name is 1-100 of A-Z a-z 0-9 . _ -, got {label.product!r}")
        row = {**label.__dict__, "reviewed_at": datetime.now(timezone.utc)}
        table = pa.Table.from_pylist([row], schema=LABEL_FILE_SCHEMA)
        name = f"label-{time.time_ns():019d}-{secrets.token_hex(4)}.parquet"
        return write_table_atomic(table, self.root / f"product={label.product}" / name)

    def read(self, product: str | None = None) -> pa.Table:
        """The latest label per (product, id), optionally of one product."""
        files = sorted(self.root.rglob("label-*.parquet")) if self.root.is_dir() else []
        table = self._read_parts(files)
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

    def _read_parts(self, files: list[Path]) -> pa.Table:
        """Every row of ``files`` (product from the folder), leaving out parts that cannot be read."""
        if not files:
            return LABEL_SCHEMA.empty_table()
        try:
            return self._dataset(files).to_table(columns=LABEL_SCHEMA.names)
        except (pa.ArrowException, OSError):  # one bad part: find it rather than lose every label
            readable = [f for f in files if self._readable(f)]
            if len(readable) == len(files):
                raise
        return self._read_parts(readable)

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

    ``n_other`` counts rows of other weights: their scores are not comparable, so they are left out.
    """
    same = [row for row in labels if weights_of(row["model_version"]) == weights_of(model_version)]
    scores = np.array([row["score"] for row in same], dtype=np.float64)
    defect = np.array([row["label"] == "defect" for row in same], dtype=bool)
    return scores, defect, len(labels) - len(same)
