"""Evaluation on an MVTec-AD-layout test set: image/pixel AUROC, per-defect table, ROC, HTML report."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from ..io.datasets import Sample, load_mask, test_samples
from .pipeline import Images, Pipeline, load_images, select
from .visualize import heatmap_overlay, image_rgb, mask_overlay, roc_png, to_png

#: pixel AUROC uses at most this many pixels (uniform subsample, fixed seed) to bound memory
MAX_PIXELS_FOR_AUROC = 20_000_000


class NonFiniteScoreError(ValueError):
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
    scores, maps = [], []
    started = time.perf_counter()
    for i in tqdm(range(0, len(samples), batch_size), desc="scoring", disable=not progress):
        res = pipe.score_images(images[i : i + batch_size], want_maps=True)
        scores.append(res.scores)
        maps.extend(m.half() for m in res.maps)
    elapsed = time.perf_counter() - started
    score = np.concatenate(scores)
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
    return EvalResult(
        image_auroc=_auroc(labels, score),
        pixel_auroc=_pixel_auroc(samples, dmaps),
        n_good=int((~labels).sum()),
        n_defect=int(labels.sum()),
        per_defect=per_defect,
        threshold=threshold,
        ms_per_image=ms_per_image,
        samples=samples,
        scores=score,
    )


def _pixel_auroc(samples: list[Sample], dmaps: Images) -> float | None:
    """Pixel AUROC at each map's own resolution (the ground truth is resized to it, nearest)."""
    if not any(s.mask_path for s in samples):
        return None
    gt = torch.cat([load_mask(s.mask_path, tuple(m.shape[-2:])).flatten() for s, m in zip(samples, dmaps, strict=True)])
    pred = torch.cat([m.float().flatten() for m in dmaps]).numpy()
    gt = gt.numpy()
    if gt.size > MAX_PIXELS_FOR_AUROC:
        idx = np.random.default_rng(0).choice(gt.size, MAX_PIXELS_FOR_AUROC, replace=False)
        gt, pred = gt[idx], pred[idx]
    return _auroc(gt, pred)


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


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
    chosen = list(worst_fp) + list(worst_fn)
    recon = {}
    for i in range(0, len(chosen), 16):
        idx = chosen[i : i + 16]
        res = pipe.score_images(select(material["images"], idx), want_recon=True)
        for j, k in enumerate(idx):
            recon[k] = (res.composite[j], res.recon[j], res.mask[j])

    def row(k: int) -> str:
        s = result.samples[k]
        comp, rec, mask = recon[k]
        cells = [
            _b64(to_png(image_rgb(material["images"][k]))),
            _b64(to_png(mask_overlay(material["images"][k], mask))),
            _b64(to_png(image_rgb(comp))),
            _b64(to_png(image_rgb(rec))),
            _b64(to_png(heatmap_overlay(material["images"][k], material["maps"][k], vmax=pipe.threshold * 1.5))),
        ]
        imgs = "".join(f'<td><img src="{c}" width="160"></td>' for c in cells)
        return f"<tr><td>{html.escape(s.path.name)}<br>{s.defect}<br>score {score[k]:.4f}</td>{imgs}</tr>"

    header = "<tr><th>image</th><th>input</th><th>excised mask S</th><th>excised I'</th><th>recovered</th><th>MSGMS map</th></tr>"
    defect_rows = "".join(
        f"<tr><td>{d}</td><td>{v['n']}</td><td>{v['image_auroc']:.4f}</td><td>{v['detected']:.2%}</td></tr>"
        for d, v in result.per_defect.items()
    )
    pix = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>image AUROC <b>{result.image_auroc:.4f}</b> · pixel AUROC <b>{pix}</b> · {result.n_good} good, {result.n_defect} defective ·
threshold {result.threshold:.4f} · {result.ms_per_image:.1f} ms/image</p>
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
