"""Offline scoring on Ray Data: ``ear-stream score INPUT… --ray [ADDRESS]`` (README, "When one Redis is not enough").

The archive path of the mission, across a Ray cluster: the inputs (files, folders, globs, or object-store
URIs such as ``s3://bucket/line-3/2026-11``) become a dataset of paths; CPU tasks read and decode them
(``map_batches``: an undecodable or unreadable file becomes a row with its reason, never a failed job);
an actor pool scores them with the fused pipeline (``num_gpus=1`` per actor on GPUs, CPU actors
elsewhere, ``concurrency=(min, max)`` so the autoscaler can add nodes); the driver writes the rows with
the same writer and schema as ``ear-stream score`` (``OUT/product=P/date=…/part-ray-….parquet``). Ids
are the inputs' paths, as for ``score``: a rerun skips the ids already in OUT.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ear_stream.errors import DataError
from ear_stream.io.decode import IMAGE_SUFFIXES, ImageDecodeError, decode_frame, frame_issue, list_images
from ear_stream.io.limits import DEFAULT_MAX_PIXELS
from ear_stream.io.results import SCHEMA, ResultWriter, is_uri, read_results

#: the worker column of the rows this path writes
WORKER = "ray"
#: what the decode tasks and the actors add to a row: why it was not scored (null when it was)
FAILURE_FIELDS = [pa.field("reason", pa.string()), pa.field("message", pa.string())]
OUT_SCHEMA = pa.schema([*SCHEMA, *FAILURE_FIELDS])


@dataclass
class RayScoreReport:
    """What ``score --ray`` did: rows written, parts, inputs skipped (already scored), per-file failures."""

    scored: int = 0
    skipped: int = 0
    written: list[Any] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Input:
    """One image to score: its id (the path, or the URI without credentials or query) and where to read it
    (``root``: the object-store URI it was listed under, credentials and endpoint included; ``inner``: the
    object's path in that filesystem). Local files have no root."""

    id: str
    root: str = ""
    inner: str = ""


def list_inputs(inputs: list[str]) -> list[Input]:
    """Local inputs as ``score`` lists them; object-store URIs listed (recursively) with pyarrow's filesystem."""
    import pyarrow.fs as pafs

    from ear_stream.io.store import redacted

    local = [i for i in inputs if not is_uri(i)]
    found = [Input(str(p)) for p in list_images(local)] if local else []
    for uri in (i for i in inputs if is_uri(i)):
        try:
            fs, base = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError, OSError) as exc:  # pyarrow's message repeats the URI, credentials too
            raise DataError(f"cannot read {redacted(uri)}: {str(exc).replace(uri, redacted(uri))}") from None
        scheme = uri.split("://", 1)[0]
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"no such object or folder: {redacted(uri)}")
        entries = (
            [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(base, recursive=True))
        )
        for entry in entries:
            if entry.type == pafs.FileType.File and Path(entry.path).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Input(f"{scheme}://{entry.path}", uri, entry.path))
    return sorted(set(found), key=lambda x: x.id)


def _read(root: str, inner: str, path: str) -> bytes:
    if not root:
        return Path(path).read_bytes()
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(root)
    with fs.open_input_stream(inner) as f:
        return f.read()


def decode_batch(batch: dict[str, np.ndarray], decode_target: int | None) -> dict[str, np.ndarray]:
    """On a CPU task: read and decode each path; pixels travel as raw bytes with their shape."""
    out: dict[str, list[Any]] = {k: [] for k in ("path", "pixels", "shape", "height", "width", "reason", "message")}
    for path, root, inner in zip(batch["path"], batch["root"], batch["inner"], strict=True):
        path = str(path)
        pixels, shape, size, reason, message = b"", [0, 0, 0], (0, 0), None, None
        try:
            arr, size = decode_frame(_read(str(root), str(inner), path), DEFAULT_MAX_PIXELS, decode_target)
            pixels, shape = np.ascontiguousarray(arr).tobytes(), list(arr.shape)
        except ImageDecodeError as exc:
            reason, message = exc.reason, f"{path}: {exc}"
        except OSError as exc:  # unreadable: gone, no permission, the store refused
            reason, message = "decode_error", f"{path}: cannot read: {exc}"
        for key, value in zip(out, (path, pixels, shape, size[0], size[1], reason, message), strict=True):
            out[key].append(value)
    return {k: np.array(v, dtype=object) for k, v in out.items()}


class BatchScorer:
    """The actor of the pool: one pipeline, loaded once; a batch of decoded frames in, rows (and failures) out."""

    def __init__(self, model_dir: str, product: str, options: dict[str, Any]) -> None:
        from ear_stream.inspect.pipeline import Pipeline

        self.product = product
        self.pipe = Pipeline.from_artifact(Path(model_dir), **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ear_stream.errors import Reason
        from ear_stream.inspect.scoring import result_rows

        # a missing reason may come back as None or NaN (Ray's object columns): only a string is a failure
        failed = [
            {"id": str(p), "product": self.product, "reason": r, "message": str(m)}
            for p, r, m in zip(batch["path"], batch["reason"], batch["message"], strict=True)
            if isinstance(r, str)
        ]
        ok = [i for i, r in enumerate(batch["reason"]) if not isinstance(r, str)]
        rows: list[dict[str, Any]] = []
        if ok:
            arrays = [
                np.frombuffer(batch["pixels"][i], np.uint8).reshape([int(x) for x in batch["shape"][i]]) for i in ok
            ]
            ids = [str(batch["path"][i]) for i in ok]
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in ok]
            res = self.pipe.score_images(self.pipe.prepare(arrays), want_regions=True, orig_sizes=sizes)
            meta = [
                {"meta": json.dumps({"path": i}), "frame_check": frame_issue(a)}
                for i, a in zip(ids, arrays, strict=True)
            ]
            for row, score, good in zip(
                result_rows(self.pipe, res, ids, self.product, WORKER, meta), res.scores, res.finite, strict=True
            ):
                if good:
                    rows.append(row)
                else:  # fail closed, as score does: no verdict for a NaN/inf score, a failure with its reason
                    failed.append(
                        {
                            "id": row["id"],
                            "product": self.product,
                            "reason": Reason.NON_FINITE_SCORE.value,
                            "message": f"{row['id']}: score {score} is not finite",
                        }
                    )
        return pa.Table.from_pylist(rows + failed, schema=OUT_SCHEMA)


def already_scored(out_dir: str | Path, product: str) -> set[str]:
    """Ids with a row for ``product`` under OUT (none when OUT holds no results yet)."""
    try:
        table = read_results(out_dir)
    except (FileNotFoundError, DataError, pa.ArrowInvalid, OSError):
        return set()
    if table.num_rows == 0:
        return set()
    return {i for i, p in zip(table["id"].to_pylist(), table["product"].to_pylist(), strict=True) if p == product}


def score_on_ray(
    inputs: list[str],
    model_dir: Path,
    out_dir: Path,
    product: str,
    *,
    address: str | None = None,
    batch_size: int = 16,
    actors: tuple[int, int] = (1, 2),
    cpus_per_actor: float = 1.0,
    pipeline_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> RayScoreReport:
    """Score ``inputs`` on Ray Data into ``out_dir``; see the module docstring."""
    import ray
    from tqdm import tqdm

    from ear_stream.inspect.pipeline import Pipeline, resolve_device

    from .local import init_ray

    options = dict(pipeline_options or {})
    report = RayScoreReport()
    files = list_inputs(inputs)
    if not files:
        raise DataError("no images found in the given inputs")
    done = already_scored(out_dir, product)
    todo = [f for f in files if f.id not in done]
    report.skipped = len(files) - len(todo)
    if not todo:
        return report
    probe = Pipeline.from_artifact(model_dir, **{**options, "device": "cpu"})  # the decode target, and a check
    decode_target = probe.decode_target
    use_gpu = resolve_device(options.get("device", "auto")).type == "cuda"
    init_ray(address)
    resources: dict[str, Any] = {"num_gpus": 1} if use_gpu else {"num_cpus": cpus_per_actor}
    ds = (
        ray.data.from_items([{"path": f.id, "root": f.root, "inner": f.inner} for f in todo])
        .map_batches(decode_batch, batch_size=batch_size, fn_kwargs={"decode_target": decode_target}, num_cpus=1)
        .map_batches(
            BatchScorer,
            batch_size=batch_size,
            fn_constructor_args=(str(model_dir), product, options),
            concurrency=actors,
            **resources,
        )
    )
    writer = ResultWriter(out_dir, WORKER)
    bar = tqdm(total=len(todo), desc=f"scoring {product} on Ray", disable=not progress, file=sys.stderr)
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=256):
        failed = table.filter(pa.compute.is_valid(table["reason"]))
        good = table.filter(pa.compute.is_null(table["reason"])).drop_columns(["reason", "message"])
        if good.num_rows:
            report.written += writer.write(good.to_pylist())
            report.scored += good.num_rows
        report.rejected += [
            (r["id"], r["reason"], r["message"]) for r in failed.select(["id", "reason", "message"]).to_pylist()
        ]
        bar.update(table.num_rows)
    bar.close()
    return report
