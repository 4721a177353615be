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
"""

from __future__ import annotations

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
        row = {**label.__dict__, "reviewed_at": datetime.now(timezone.utc)}
        table = pa.Table.from_pylist([row], schema=LABEL_SCHEMA)
        name = f"label-{time.time_ns():019d}-{secrets.token_hex(4)}.parquet"
        return write_table_atomic(table, self.root / f"product={safe_component(label.product)}" / name)

    def read(self, product: str | None = None) -> pa.Table:
        """The latest label per (product, id), optionally of one product."""
        files = sorted(self.root.rglob("label-*.parquet")) if self.root.is_dir() else []
        if not files:
            return LABEL_SCHEMA.empty_table()
        table = ds.dataset([str(f) for f in files], format="parquet", schema=LABEL_SCHEMA).to_table()
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
