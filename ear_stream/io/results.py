"""Verdict rows as Parquet (docs/design.md, "Parquet"): atomic part files in a Hive layout, read back de-duplicated.

``OUT/product=P/date=YYYY-MM-DD/part-<worker>-<ns>-<seq>.parquet`` (``<ns>`` the write time in
nanoseconds, so names stay unique across restarts of a worker) — written to a temporary name,
fsynced, renamed and the folder fsynced, so a part is either absent or whole. The stream worker
acknowledges entries only after this.

A row has the columns of :data:`SCHEMA` and is built in one place, :func:`verdict_row`, next to the
schema: ``score`` (offline), the stream worker and the Ray actors all write through it.

The partition keys live in the path only: ``product`` is not repeated inside the files
(:data:`FILE_SCHEMA`), so every reader's default call opens the tree — pandas,
``pyarrow.parquet.read_table``, ``pyarrow.dataset`` and Polars with hive partitioning,
DuckDB with ``hive_partitioning=true``, Spark — with ``product`` and ``date`` from the
path. Trees written before (``product`` inside the files too) still read with
:func:`read_results`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import ConfigError

log = logging.getLogger("ear_stream.io.results")
UTC_MS = pa.timestamp("ms", tz="UTC")
#: one defect region: box in the original image's pixels (inclusive), area in pixels, peak and mean MSGMS
REGION = pa.struct(
    [
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("area", pa.int64()),
        ("peak", pa.float32()),
        ("mean", pa.float32()),
    ]
)
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stream_id", pa.string()),
        ("product", pa.string()),
        ("score", pa.float32()),
        ("normalized_score", pa.float32()),
        ("is_anomaly", pa.bool_()),
        ("threshold", pa.float32()),
        ("mask_ratio", pa.float32()),
        ("mosaic_scale", pa.int32()),
        ("model_version", pa.string()),
        ("worker", pa.string()),
        ("enqueued_at", UTC_MS),
        ("processed_at", UTC_MS),
        ("latency_ms", pa.float32()),
        ("meta", pa.string()),
        ("heatmap", pa.binary()),
        ("n_regions", pa.int32()),
        ("regions", pa.list_(REGION)),
        # null for a frame that passed the sanity check; else why it cannot be a part (and is_anomaly is true)
        ("frame_check", pa.string()),
        # where the original image is kept (a blob store URI, io/keeping.py), null when it was not kept
        ("image_uri", pa.string()),
        # the refined candidate's score of the same image and its version (worker --shadow), null without one
        ("shadow_score", pa.float32()),
        ("shadow_version", pa.string()),
        # the claim check's object (worker, docs/design.md "Claim-check entries"), null for an inline image
        ("payload_uri", pa.string()),
    ]
)

#: what a part file holds: every column but the partition keys (product and date come from its path)
FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "product"])
#: the hive partition keys of a results tree, as strings
PARTITIONING = pa.schema([("product", pa.string()), ("date", pa.string())])
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def verdict_row(
    *,
    id: str,
    product: str,
    score: float,
    normalized_score: float,
    is_anomaly: bool,
    threshold: float,
    mask_ratio: float,
    mosaic_scale: int,
    model_version: str,
    worker: str,
    processed_at: datetime,
    regions: list[dict[str, Any]] | None = None,
    heatmap: bytes | None = None,
    frame_check: str | None = None,
    stream_id: str | None = None,
    enqueued_at: datetime | None = None,
    meta: str | None = None,
    image_uri: str | None = None,
    shadow_score: float | None = None,
    shadow_version: str | None = None,
    payload_uri: str | None = None,
) -> dict[str, Any]:
    """One Parquet row with every column of :data:`SCHEMA`, in its order (docs/design.md, "Parquet").

    The stream's fields (``stream_id``, ``enqueued_at``, ``meta``) are optional; what follows from other
    columns is derived here, once: ``latency_ms`` from the enqueue and processing times, ``n_regions`` from
    the regions, and fail closed, a row with a ``frame_check`` (a frame the model cannot judge) is never a
    good part (``is_anomaly`` true). ``image_uri`` is set by the image keeper (:mod:`.keeping`) before the
    row is written, never after.
    """
    latency = None if enqueued_at is None else (processed_at - enqueued_at).total_seconds() * 1000
    return {
        "id": id,
        "stream_id": stream_id,
        "product": product,
        "score": float(score),
        "normalized_score": float(normalized_score),
        "is_anomaly": bool(is_anomaly) or bool(frame_check),
        "threshold": threshold,
        "mask_ratio": float(mask_ratio),
        "mosaic_scale": mosaic_scale,
        "model_version": model_version,
        "worker": worker,
        "enqueued_at": enqueued_at,
        "processed_at": processed_at,
        "latency_ms": latency,
        "meta": meta,
        "heatmap": heatmap,
        "n_regions": None if regions is None else len(regions),
        "regions": regions,
        "frame_check": frame_check,
        "image_uri": image_uri,
        "shadow_score": shadow_score,
        "shadow_version": shadow_version,
        "payload_uri": payload_uri,
    }


def safe_component(value: str) -> str:
    """A value usable inside a path component (products and worker names come from users)."""
    return _SAFE.sub("_", value)[:100] or "_"


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


@dataclass
class ResultWriter:
    """Writes batches of rows to new part files; one writer per worker.

    ``out_dir`` is a local folder (temporary name, fsync, rename) or a pyarrow
    filesystem URI such as ``s3://bucket/prefix`` or ``gs://…``, where an
    object becomes visible whole when its upload completes.
    """

    out_dir: Path | str
    worker: str

    def __post_init__(self) -> None:
        self._fs: pafs.FileSystem | None = None
        if is_uri(self.out_dir):
            fs, base = pafs.FileSystem.from_uri(str(self.out_dir))
            if isinstance(fs, pafs.LocalFileSystem):  # file://: the local path, with its fsync and rename
                self.out_dir = Path(base)
            else:
                self._fs, self._base = fs, base
        else:
            self.out_dir = Path(self.out_dir)
        self._seq = 0

    def write(self, rows: list[dict[str, Any]]) -> list[Path]:
        """Write rows grouped by (product, date of processed_at); returns the durable paths."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            day = row["processed_at"].astimezone(timezone.utc).strftime("%Y-%m-%d")
            groups.setdefault((row["product"], day), []).append(row)
        return [self._write_part(product, day, part) for (product, day), part in sorted(groups.items())]

    def _write_part(self, product: str, day: str, rows: list[dict[str, Any]]) -> Path | str:
        partition = f"product={safe_component(product)}/date={day}"
        self._seq += 1
        # time in the sequence keeps names unique across restarts of the same worker
        name = f"part-{safe_component(self.worker)}-{time.time_ns():019d}-{self._seq:06d}.parquet"
        table = pa.Table.from_pylist([{f: r.get(f) for f in FILE_SCHEMA.names} for r in rows], schema=FILE_SCHEMA)
        if self._fs is not None:
            return write_object_atomic(self._fs, table, f"{self._base.rstrip('/')}/{partition}", name)
        return write_table_atomic(table, self.out_dir / partition / name)  # type: ignore[operator]


def write_object_atomic(fs: pafs.FileSystem, table: pa.Table, folder: str, name: str) -> str:
    """Write a Parquet object to a filesystem URI so that it is absent or whole under its final name.

    The file is serialised in memory first and uploaded under a hidden temporary name (readers skip
    ``.``-prefixed names), then moved: a stream closed by an error would otherwise leave a truncated
    object under the final name (an object store's close completes the upload with what it has).
    Whatever fails, the temporary object is removed.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return write_bytes_object_atomic(fs, sink.getvalue(), folder, name)


def write_bytes_object_atomic(fs: pafs.FileSystem, data: bytes | pa.Buffer, folder: str, name: str) -> str:
    """Upload ``data`` as ``folder/name``, absent or whole (:func:`write_object_atomic`'s upload, for any bytes).

    The hidden temporary name is unique per call, so two writers of the same name (the blob store's
    same content from two threads) never move each other's upload.
    """
    fs.create_dir(folder, recursive=True)
    final, tmp = f"{folder}/{name}", f"{folder}/.{name}.{secrets.token_hex(4)}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, final)
    except BaseException:
        _delete_quietly(fs, tmp)
        raise
    return final


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):  # never written, or the store is gone: nothing more to do
        fs.delete_file(path)


def write_table_atomic(table: pa.Table, final: Path) -> Path:
    """Write a Parquet file that is either absent or whole, even across a crash or a power cut.

    A hidden temporary name (readers skip ``.``-prefixed files), fsync, rename, fsync of the folder; the
    temporary file is removed when any step fails.
    """
    return write_file_atomic(final, lambda f: pq.write_table(table, f, compression="zstd"))


def write_file_atomic(final: Path, fill: Callable[[BinaryIO], object]) -> Path:
    """Write a local file that is either absent or whole (:func:`write_table_atomic`'s steps, for any content).

    ``fill`` writes the content into the open temporary file; its name is unique per call, so two writers
    of the same final name (the blob store's same content from two threads) never share one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:  # a full disk (ENOSPC) or a kill: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return final


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def read_results(out_dir: str | Path, dedupe: bool = True) -> pa.Table:
    """Every part under ``out_dir``; duplicates of a (product, id) (at-least-once) keep the earliest row."""
    if is_uri(out_dir):
        fs, base = pafs.FileSystem.from_uri(str(out_dir))
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(i.path for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))
    else:
        fs, base = None, str(out_dir)
        files = sorted(str(p) for p in Path(out_dir).rglob("part-*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    try:
        table = _read_parts(files, fs, base)
    except (pa.ArrowInvalid, OSError):  # one unreadable part (0 bytes, truncated, foreign) must not hide the rest
        files = readable_parts(files, fs)
        table = _read_parts(files, fs, base) if files else SCHEMA.empty_table()
    if not dedupe or table.num_rows == 0:
        return table
    # an id is unique per product (two lines may reuse ids): duplicates are the same (product, id)
    products = table["product"].to_numpy(zero_copy_only=False)
    ids = table["id"].to_numpy(zero_copy_only=False)
    order = np.lexsort((table["processed_at"].to_numpy(zero_copy_only=False).astype("int64"), ids, products))
    key_p, key_i = products[order], ids[order]
    first = np.concatenate([[True], (key_i[1:] != key_i[:-1]) | (key_p[1:] != key_p[:-1])]) if len(ids) else []
    keep = order[first] if len(ids) else order
    return table.take(np.sort(keep))


def _read_parts(files: list[str], fs: pafs.FileSystem | None, base: str) -> pa.Table:
    # product from the path (older parts also hold it inside: the path's value is the same); parts written
    # before a column existed read back with it null
    dataset = ds.dataset(
        files,
        format="parquet",
        schema=pa.schema([*SCHEMA, PARTITIONING.field("date")]),
        filesystem=fs,
        partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
        partition_base_dir=base,
    )
    return dataset.to_table(columns=SCHEMA.names)


def readable_parts(files: list[str], fs: pafs.FileSystem | None = None) -> list[str]:
    """The parts whose Parquet footer reads; each other one is named in a warning and skipped."""
    good = []
    for path in files:
        try:
            if fs is None:
                pq.read_metadata(path)
            else:
                with fs.open_input_file(path) as f:
                    pq.read_metadata(f)
            good.append(path)
        except (pa.ArrowInvalid, OSError) as exc:
            log.warning("skipping unreadable results part %s (%s)", path, exc)
    return good


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts, anomaly rate and score quantiles per product."""
    out: dict[str, Any] = {"rows": table.num_rows, "products": {}}
    if table.num_rows == 0:
        return out
    products = table["product"].to_numpy(zero_copy_only=False)
    scores = table["score"].to_numpy(zero_copy_only=False)
    anomalous = table["is_anomaly"].to_numpy(zero_copy_only=False)
    for product in sorted(set(products)):
        sel = products == product
        s = scores[sel]
        out["products"][product] = {
            "count": int(sel.sum()),
            "anomalies": int(anomalous[sel].sum()),
            "anomaly_rate": float(anomalous[sel].mean()),
            "score_p50": float(np.quantile(s, 0.5)),
            "score_p95": float(np.quantile(s, 0.95)),
            "score_max": float(s.max()),
        }
    return out


#: bucket widths ``results --by`` accepts, in milliseconds
BUCKETS_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}


def summarize_over_time(table: pa.Table, by: str = "hour") -> list[dict[str, Any]]:
    """Per product and time bucket of ``processed_at``: count, anomaly rate and score p50/p95/max.

    What an operator reads to see a line drift: the anomaly rate and the median score hour by hour.
    """
    if by not in BUCKETS_MS:
        raise ConfigError(f"--by must be one of {', '.join(BUCKETS_MS)}, got {by!r}")
    if table.num_rows == 0:
        return []
    width = BUCKETS_MS[by]
    ms = table["processed_at"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    bucket = ms // width * width
    products = table["product"].to_numpy(zero_copy_only=False)
    scores = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    anomalous = table["is_anomaly"].to_numpy(zero_copy_only=False).astype(bool)
    rows = []
    for product in sorted(set(products)):
        for start in sorted(set(bucket[products == product])):
            sel = (products == product) & (bucket == start)
            s = scores[sel]
            rows.append(
                {
                    "product": product,
                    "start": datetime.fromtimestamp(start / 1000, tz=timezone.utc).isoformat(),
                    "count": int(sel.sum()),
                    "anomaly_rate": float(anomalous[sel].mean()),
                    "score_p50": float(np.quantile(s, 0.5)),
                    "score_p95": float(np.quantile(s, 0.95)),
                    "score_max": float(s.max()),
                }
            )
    return rows
