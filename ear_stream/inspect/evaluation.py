"""Evaluation on an MVTec-AD-layout test set: image/pixel AUROC, per-defect table, ROC, HTML report."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ..errors import EarStreamError
from ..io.datasets import Sample, load_mask, test_samples
from .metrics import aupro, f1_max, rates_at
from .pipeline import Images, Pipeline, load_images, select
from .visualize import contour_overlay, heatmap_overlay, histogram_png, image_rgb, mask_overlay, roc_png, to_png

#: pixel AUROC uses at most this many pixels (uniform subsample, fixed seed) to bound memory
MAX_PIXELS_FOR_AUROC = 20_000_000


class NonFiniteScoreError(EarStreamError, ValueError):
    """Some test image scored NaN/inf: metrics over such scores would be meaningless."""


@dataclass
class EvalResult:
    image_auroc: float
    pixel_auroc: float | None
    n_good: int
    n_defect: int
    per_defect: dict[str, dict[str, float]]
    threshold: float
    ms_per_image: float
    #: F1-max over image thresholds, and the false-reject / escape rates at the model's threshold
    image_f1_max: float = float("nan")
    false_reject_rate: float = float("nan")
    escape_rate: float = float("nan")
    #: F1-max over pixel thresholds and the area under the per-region-overlap curve up to FPR 0.3
    pixel_f1_max: float | None = None
    aupro_30: float | None = None
    samples: list[Sample] = field(repr=False, default_factory=list)
    scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_json(self) -> dict[str, Any]:
        return {
            "image_auroc": self.image_auroc,
            "pixel_auroc": self.pixel_auroc,
            "n_good": self.n_good,
            "n_defect": self.n_defect,
            "per_defect": self.per_defect,
            "threshold": self.threshold,
            "ms_per_image": self.ms_per_image,
            "image_f1_max": self.image_f1_max,
            "false_reject_rate": self.false_reject_rate,
            "escape_rate": self.escape_rate,
            "pixel_f1_max": self.pixel_f1_max,
            "aupro_30": self.aupro_30,
        }


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def evaluate(
    pipe: Pipeline,
    data_root: str | Path,
    category: str,
    batch_size: int = 16,
    progress: bool = True,
    samples: list[Sample] | None = None,
    images: Images | None = None,
) -> tuple[EvalResult, dict[str, Any]]:
    """Score every test image; returns the metrics and the material the report needs.

    ``samples``/``images`` (already loaded at the model's size) skip the listing
    and decoding, for callers that evaluate many models on one set.
    """
    import time

    samples = test_samples(data_root, category) if samples is None else samples
    if images is None:
        images = load_images(pipe.config, [s.path for s in samples], desc="loading test images", progress=progress)
    started = time.perf_counter()
    score, maps = pipe.score_batches(images, batch_size, want_maps=True, progress=progress)
    elapsed = time.perf_counter() - started
    bad = [samples[i].path.name for i in np.where(~np.isfinite(score))[0]]
    if bad:
        raise NonFiniteScoreError(
            f"{len(bad)} of {len(samples)} test images scored NaN/inf (e.g. {', '.join(bad[:3])}): the model's "
            "reconstruction is not finite (diverged training?); no AUROC is reported over them"
        )
    labels = np.array([s.defect != "good" for s in samples], dtype=bool)
    result = compute_metrics(samples, score, maps, pipe.threshold, 1000.0 * elapsed / max(1, len(samples)))
    return result, {"images": images, "maps": maps, "labels": labels}


def compute_metrics(
    samples: list[Sample], score: np.ndarray, dmaps: Images, threshold: float, ms_per_image: float
) -> EvalResult:
    """``dmaps``: one map per sample ([N, 1, H, W] or a list of [1, H, W] of any sizes)."""
    """Image/pixel AUROC and the per-defect table of already-scored samples (any subset of a test set)."""
    labels = np.array([s.defect != "good" for s in samples], dtype=bool)
    per_defect = {}
    for defect in sorted({s.defect for s in samples} - {"good"}):
        sel = np.array([s.defect in (defect, "good") for s in samples])
        per_defect[defect] = {
            "n": int(sum(s.defect == defect for s in samples)),
            "image_auroc": _auroc(labels[sel], score[sel]),
            "detected": float((score[np.array([s.defect == defect for s in samples])] > threshold).mean()),
        }
    pixel = _pixel_metrics(samples, dmaps)
    return EvalResult(
        image_auroc=_auroc(labels, score),
        pixel_auroc=pixel["auroc"],
        image_f1_max=f1_max(labels, score)[0],
        **rates_at(labels, score, threshold),
        pixel_f1_max=pixel["f1_max"],
        aupro_30=pixel["aupro_30"],
        n_good=int((~labels).sum()),
        n_defect=int(labels.sum()),
        per_defect=per_defect,
        threshold=threshold,
        ms_per_image=ms_per_image,
        samples=samples,
        scores=score,
    )


def _pixel_metrics(samples: list[Sample], dmaps: Images) -> dict[str, float | None]:
    """Pixel AUROC, pixel F1-max and AUPRO@0.3 at each map's own resolution (ground truth resized, nearest)."""
    if not any(s.mask_path for s in samples):
        return {"auroc": None, "f1_max": None, "aupro_30": None}
    masks = [load_mask(s.mask_path, tuple(m.shape[-2:])).numpy() for s, m in zip(samples, dmaps, strict=True)]
    maps = [m.float().squeeze(0).numpy() for m in dmaps]
    gt = np.concatenate([m.ravel() for m in masks])
    pred = np.concatenate([m.ravel() for m in maps])
    if gt.size > MAX_PIXELS_FOR_AUROC:
        idx = np.random.default_rng(0).choice(gt.size, MAX_PIXELS_FOR_AUROC, replace=False)
        gt, pred = gt[idx], pred[idx]
    return {"auroc": _auroc(gt, pred), "f1_max": f1_max(gt, pred)[0], "aupro_30": aupro(masks, maps, 0.3)}


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _recovered(pipe: Pipeline, images: Any, chosen: list[int]) -> dict[int, tuple]:
    """(excised input, recovery, mask) of the chosen images, in batches of 16."""
    recon = {}
    for i in range(0, len(chosen), 16):
        idx = chosen[i : i + 16]
        res = pipe.score_images(select(images, idx), want_recon=True)
        assert res.composite is not None and res.recon is not None and res.mask is not None  # want_recon
        for j, k in enumerate(idx):
            recon[k] = (res.composite[j], res.recon[j], res.mask[j])
    return recon


def _example_row(pipe: Pipeline, sample: Any, score: float, image: Any, dmap: Any, recovered: tuple) -> str:
    """One report row: input, mask, excised input, recovery, map and regions of one image."""
    comp, rec, mask = recovered
    cells = [
        _b64(to_png(image_rgb(image))),
        _b64(to_png(mask_overlay(image, mask))),
        _b64(to_png(image_rgb(comp))),
        _b64(to_png(image_rgb(rec))),
        _b64(to_png(heatmap_overlay(image, dmap, vmax=pipe.threshold * 1.5))),
        _b64(to_png(contour_overlay(image, dmap, pipe.region_threshold))),
    ]
    imgs = "".join(f'<td><img src="{c}" width="160"></td>' for c in cells)
    return f"<tr><td>{html.escape(sample.path.name)}<br>{sample.defect}<br>score {score:.4f}</td>{imgs}</tr>"


def _degenerate_warning(rec: dict | None) -> str:
    """A red box when the recovery check marked the model degenerate (its scores say little)."""
    if not rec or not rec.get("degenerate", rec.get("ratio_to_flat", 0.0) >= rec.get("degenerate_ratio", 1.0)):
        return ""
    return (
        '<p style="background:#fdd;padding:8px;border:2px solid #c00"><b>Warning: degenerate model.</b> '
        f"On held-out good images its recovery error is {rec['ratio_to_flat']:.2f}&times; that of a flat "
        "image: the U-Net does not recover the images, and its scores say little. Train longer or check the "
        "data.</p>"
    )


def write_report(
    path: str | Path, pipe: Pipeline, result: EvalResult, material: dict[str, Any], title: str, worst: int = 8
) -> Path:
    """Self-contained HTML: metrics, per-defect table, ROC curve, worst false positives/negatives."""
    labels, score = material["labels"], result.scores
    fpr, tpr, _ = roc_curve(labels, score) if 0 < labels.sum() < len(labels) else (np.zeros(1), np.zeros(1), None)
    roc = roc_png({"image": (fpr, tpr, result.image_auroc)})
    good_idx = np.where(~labels)[0]
    bad_idx = np.where(labels)[0]
    worst_fp = good_idx[np.argsort(-score[good_idx])][:worst]
    worst_fn = bad_idx[np.argsort(score[bad_idx])][:worst]
    recon = _recovered(pipe, material["images"], list(worst_fp) + list(worst_fn))

    def row(k: int) -> str:
        return _example_row(
            pipe, result.samples[k], float(score[k]), material["images"][k], material["maps"][k], recon[k]
        )

    header = (
        "<tr><th>image</th><th>input</th><th>excised mask S</th><th>excised I'</th><th>recovered</th>"
        "<th>MSGMS map</th><th>defect regions (map &gt; pixel threshold)</th></tr>"
    )
    hist = histogram_png({"good": score[~labels], "defective": score[labels]}, pipe.threshold)

    def fmt(v) -> str:
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.4f}"

    defect_rows = "".join(
        f"<tr><td>{d}</td><td>{v['n']}</td><td>{v['image_auroc']:.4f}</td><td>{v['detected']:.2%}</td></tr>"
        for d, v in result.per_defect.items()
    )
    pix = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
    warning = _degenerate_warning(pipe.recovery)
    map_name = "head map (defect probability)" if pipe.head is not None else "MSGMS map"
    header = header.replace("MSGMS map", map_name)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px}}pre{{white-space:pre-wrap;overflow-wrap:anywhere}}</style>
</head><body><h1>{html.escape(title)}</h1>{warning}
<p>image AUROC <b>{result.image_auroc:.4f}</b> · pixel AUROC <b>{pix}</b> · {result.n_good} good, {result.n_defect} defective ·
threshold {result.threshold:.4f} · {result.ms_per_image:.1f} ms/image</p>
<p>image F1-max {fmt(result.image_f1_max)} · at the threshold: false rejects {fmt(result.false_reject_rate)},
escapes {fmt(result.escape_rate)} · pixel F1-max {fmt(result.pixel_f1_max)} · AUPRO@0.3 {fmt(result.aupro_30)}</p>
<h2>Scores of good and defective images</h2><img src="{_b64(hist)}">
<pre>{html.escape(json.dumps(pipe.config.to_dict()))}</pre>
<h2>Per defect type</h2><table><tr><th>defect</th><th>n</th><th>image AUROC</th><th>flagged at threshold</th></tr>{defect_rows}</table>
<h2>ROC</h2><img src="{_b64(roc)}">
<h2>Worst false positives (highest-scored good images)</h2><table>{header}{"".join(row(k) for k in worst_fp)}</table>
<h2>Worst false negatives (lowest-scored defective images)</h2><table>{header}{"".join(row(k) for k in worst_fn)}</table>
</body></html>"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    path.with_suffix(".roc.png").write_bytes(roc)
    return path
