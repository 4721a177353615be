"""Offline batch scoring of image files into Parquet rows (``ear-stream score``)."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..io.decode import ImageDecodeError, decode_frame, frame_issue
from ..io.keeping import ImageKeeper
from ..io.limits import DEFAULT_MAX_PIXELS
from ..io.results import ResultWriter, now_utc, verdict_row
from ..model.config import NON_FINITE_SCORE
from .pipeline import BatchResult, Pipeline
from .stages import StageTimer
from .visualize import contour_overlay, defect_mask_png, heatmap_overlay, to_png


@dataclass
class ScoreReport:
    written: list[Path] = field(default_factory=list)
    scored: int = 0
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)


def result_rows(
    pipe: Pipeline,
    res: BatchResult,
    ids: list[str],
    product: str,
    worker: str,
    extra: list[dict[str, Any]] | None = None,
    images=None,
    processed_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Parquet rows (docs/design.md, "Parquet") for one scored batch, built by :func:`~ear_stream.io.results.verdict_row`.

    ``extra`` adds per-row fields of that builder (``stream_id``, ``enqueued_at``, ``meta``, ``frame_check``);
    ``processed_at`` is the batch's time (now when not given); ``images`` adds the heatmap overlays. A frame
    without a camera fault (``frame_check``) that the model finds out of distribution gets that as its check.
    """
    processed = processed_at or now_utc()
    rows = []
    for i, ident in enumerate(ids):
        fields = dict(extra[i]) if extra else {}
        frame_check = fields.pop("frame_check", None)
        if not frame_check and res.ood is not None:  # a camera fault first, else out of distribution
            frame_check = res.ood[i]
        heatmap = None
        if res.maps is not None and images is not None:
            heatmap = to_png(heatmap_overlay(images[i], res.maps[i], vmax=pipe.threshold * 1.5))
        row = verdict_row(
            id=ident,
            product=product,
            score=res.scores[i],
            normalized_score=res.normalized[i],
            is_anomaly=res.is_anomaly[i],
            threshold=pipe.threshold,
            mask_ratio=res.mask_ratio[i],
            mosaic_scale=pipe.config.mosaic_scale,
            model_version=pipe.model_version,
            worker=worker,
            processed_at=processed,
            regions=None if res.regions is None else res.regions[i],
            heatmap=heatmap,
            frame_check=frame_check,
            **fields,
        )
        rows.append(row)
    return rows


def map_file_name(ident: str) -> str:
    """Heatmap file name: the image stem plus a short hash of its path (stems repeat across folders)."""
    digest = hashlib.sha1(ident.encode()).hexdigest()[:8]
    return f"{Path(ident).stem[:100]}-{digest}_map.png"  # file systems cap names at 255 bytes


def score_files(
    pipe: Pipeline,
    files: list[Path],
    out_dir: Path,
    product: str,
    batch_size: int = 16,
    save_maps: Path | None = None,
    worker: str = "cli",
    progress: bool = True,
    keeper: ImageKeeper | None = None,
    timer: StageTimer | None = None,
) -> ScoreReport:
    """Score files in batches; undecodable files are reported, never fatal.

    With a ``keeper`` the bytes of each flagged file (and of the passed review sample), as read for scoring,
    are kept and the row names them (``image_uri``); retention runs as the batches go and once at the end.
    With a ``timer`` each batch's stages are accounted there (read+decode, prepare, the pipeline's, verdicts,
    rows, write).
    """
    timer = timer or StageTimer()
    pipe.timer = timer
    writer = ResultWriter(out_dir, worker)
    report = ScoreReport()
    bar = tqdm(total=len(files), desc=f"scoring {product}", disable=not progress, file=sys.stderr)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays, ids, sizes, payloads = [], [], [], []
        for path in chunk:
            try:
                data = path.read_bytes()  # once: what is decoded is what is kept
                arr, size = decode_frame(data, DEFAULT_MAX_PIXELS, pipe.decode_target)
            except ImageDecodeError as exc:
                report.rejected.append((str(path), exc.reason, f"{path}: {exc}"))
                continue
            arrays.append(arr)
            sizes.append(size)
            ids.append(str(path))
            payloads.append(data if keeper is not None else b"")
        timer.mark("read+decode")
        if arrays:
            images = pipe.prepare(arrays)
            timer.mark("prepare")
            res = pipe.score_images(images, want_maps=save_maps is not None, want_regions=True, orig_sizes=sizes)
            timer.mark("verdicts")
            meta = [
                {"meta": json.dumps({"path": i}), "frame_check": frame_issue(a)}
                for i, a in zip(ids, arrays, strict=True)
            ]
            rows = result_rows(pipe, res, ids, product, worker, meta, images if save_maps else None)
            for ident, score, ok in zip(ids, res.scores, res.finite, strict=True):
                if not ok:  # fail closed: no verdict row for a NaN/inf score, listed as a failure
                    report.rejected.append((ident, NON_FINITE_SCORE, f"{ident}: score {score} is not finite"))
            if keeper is not None:
                for row, data, ok in zip(rows, payloads, res.finite, strict=True):
                    if ok and keeper.wants(product, row["id"], row["is_anomaly"]):
                        keeper.keep(row, data)
            rows = [row for row, ok in zip(rows, res.finite, strict=True) if ok]
            ids = [i for i, ok in zip(ids, res.finite, strict=True) if ok]
            if save_maps is not None:
                save_maps.mkdir(parents=True, exist_ok=True)
                kept = [i for i, ok in enumerate(res.finite) if ok]
                assert res.maps is not None  # asked for (want_maps): a tensor, or a list of native-size maps
                for ident, row, k in zip(ids, rows, kept, strict=True):
                    name = map_file_name(ident)
                    (save_maps / name).write_bytes(row["heatmap"])
                    thr = pipe.region_threshold
                    (save_maps / name.replace("_map.png", "_mask.png")).write_bytes(defect_mask_png(res.maps[k], thr))
                    contour = to_png(contour_overlay(images[k], res.maps[k], thr))
                    (save_maps / name.replace("_map.png", "_contours.png")).write_bytes(contour)
            if keeper is not None:
                keeper.settle()  # image_uri set (or null) before the rows are written
                keeper.maybe_prune()
            timer.mark("rows")
            report.written += writer.write(rows)
            report.scored += len(rows)
            timer.mark("write")
        bar.update(len(chunk))
    bar.close()
    if keeper is not None:
        keeper.prune_now()
        keeper.close()
    timer.mark("write")
    pipe.timer = None
    return report
