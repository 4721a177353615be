"""Metrics inspection engineers use beyond AUROC: F1-max, false-reject and escape rates, pixel F1, AUPRO.

Pure numpy (and scipy's labelling for ground-truth components), each checked
against a small hand-computed case in ``tests/inspect/test_metrics.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .thresholds import f1_optimal

#: 8-connectivity, as in the MVTec AD evaluation code
EIGHT = np.ones((3, 3), dtype=bool)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best F1 of ``score > t`` over all t, that t); NaN when one class is missing."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan"), float("nan")
    threshold, f1 = f1_optimal(scores, labels)
    return f1, threshold


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """At one threshold: false rejects (good images flagged) and escapes (defective images passed)."""
    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64)
    flagged = scores > threshold
    return {
        "false_reject_rate": float(flagged[~labels].mean()) if (~labels).any() else float("nan"),
        "escape_rate": float((~flagged[labels]).mean()) if labels.any() else float("nan"),
    }


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1] (MVTec AD).

    For every threshold: PRO is the mean, over all ground-truth connected components
    (8-connected, per image), of the fraction of the component above the threshold;
    FPR is the fraction of defect-free pixels above it. The curve is integrated with
    the trapezoid rule from FPR 0 to ``fpr_limit`` (interpolated there) and divided by it.
    """
    weights_pro, weights_fpr, values = [], [], []
    n_components = 0
    n_good = 0
    per_image = []
    for mask, amap in zip(masks, maps, strict=True):
        mask = np.asarray(mask, dtype=bool)
        labels, count = ndimage.label(mask, structure=EIGHT)
        per_image.append((labels, count, np.asarray(amap, dtype=np.float64)))
        n_components += count
        n_good += int((~mask).sum())
    if n_components == 0 or n_good == 0:
        return float("nan")
    for labels, count, amap in per_image:
        sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
        pro_w = np.where(labels > 0, 1.0 / (n_components * sizes[labels]), 0.0)
        weights_pro.append(pro_w.ravel())
        weights_fpr.append((labels == 0).ravel() / n_good)
        values.append(amap.ravel())
    v = np.concatenate(values)
    order = np.argsort(-v, kind="stable")
    v = v[order]
    pro = np.cumsum(np.concatenate(weights_pro)[order])
    fpr = np.cumsum(np.concatenate(weights_fpr)[order])
    last = np.r_[v[1:] != v[:-1], True]  # one point per distinct threshold (ties move together)
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    # cut at the limit, interpolating the curve there
    cut = np.searchsorted(fpr, fpr_limit, side="right")
    f, p = fpr[:cut], pro[:cut]
    if cut < fpr.size and f[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        # a vertical jump at x0 is already in (x0, y0); the interpolated point lies on the next segment
        y = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        f, p = np.r_[f, fpr_limit], np.r_[p, y]
    return float(np.trapezoid(p, f) / fpr_limit)
