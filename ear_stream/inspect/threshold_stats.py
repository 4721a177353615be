"""The statistics threshold policies are made of, with no policy names in them.

Order statistics of held-out good scores (:func:`lowest_threshold_with_frr`) with the small-sample
log-normal tolerance bound that backs them (:func:`tail_bound`), the F1-optimal cut of a labelled set
(:func:`f1_optimal`), and what the manifest keeps about held-out scores and pixels
(:func:`good_score_stats`, :func:`pixel_quantile_grid`). Also what a threshold does on labelled items
(:func:`operating_point`, :func:`class_counts`), which the review station shows.

Pure numpy (scipy for the tolerance factor, imported when used): :mod:`.threshold_policies` turns
these into named policies, :mod:`.calibration` computes the inputs, :mod:`.thresholds` revises a
stored threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = [
    "PIXEL_GRID",
    "TAIL_CONFIDENCE",
    "TAIL_MIN_SCORES",
    "class_counts",
    "f1_optimal",
    "false_reject_rate",
    "good_score_stats",
    "lowest_threshold_with_frr",
    "operating_point",
    "pixel_quantile_grid",
    "tail_bound",
]

#: points of the stored pixel quantile grid (0, 0.1 %, …, 100 %)
PIXEL_GRID = 1001
#: confidence of the small-sample tail bound of ``fpr:F`` (see :func:`tail_bound`), and the fewest scores it
#: is fitted to: below 10 the fitted spread is itself too uncertain (with 5 scores the bound reached 6x the
#: maximum and passed every defect of the demo), so the sample maximum stays the threshold
TAIL_CONFIDENCE = 0.9
TAIL_MIN_SCORES = 10


def good_score_stats(scores: np.ndarray) -> dict[str, Any]:
    """What the manifest keeps about held-out good scores: the scores themselves and their summary."""
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "n": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(scores.min()),
        "max": float(scores.max()),
        "p50": float(np.quantile(scores, 0.5)),
        "p95": float(np.quantile(scores, 0.95)),
        "scores": [float(s) for s in scores],
    }


def pixel_quantile_grid(values: np.ndarray) -> list[float]:
    """Held-out map pixels as a quantile grid (what pixel policies need, in :data:`PIXEL_GRID` numbers)."""
    return [float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, PIXEL_GRID))]


def tail_bound(good: np.ndarray, frr: float, confidence: float = TAIL_CONFIDENCE) -> float:
    """Upper tolerance bound of the good scores: with ``confidence``, at most ``frr`` of good parts lie above it.

    Log-normal model of the scores (they are positive and right-skewed) and the exact one-sided normal
    tolerance factor (noncentral t). It is what ``fpr:F`` uses when the held-out set is too small to
    resolve F (fewer than 1/F images: a sample maximum would be the threshold, resting on one image).
    """
    from scipy.stats import nct, norm  # scipy costs an import only where a small set needs the bound

    logs = np.log(np.maximum(np.asarray(good, dtype=np.float64), 1e-6))
    n = logs.size
    if n < 2 or not 0.0 < frr < 1.0:
        return float(np.exp(logs.max())) if n else float("inf")
    k = float(nct.ppf(confidence, df=n - 1, nc=norm.ppf(1.0 - frr) * np.sqrt(n)) / np.sqrt(n))
    return float(np.exp(logs.mean() + k * logs.std(ddof=1)))


def lowest_threshold_with_frr(good: np.ndarray, frr: float) -> float:
    """Smallest t with mean(good > t) ≤ frr: as sensitive as the allowed false rejects permit.

    With fewer than 1/frr held-out scores no order statistic resolves frr: the threshold is then the
    larger of the sample maximum and the small-sample tail bound (:func:`tail_bound`, from
    :data:`TAIL_MIN_SCORES` scores on), so a small set's threshold does not rest on its single highest image.
    """
    good = np.sort(np.asarray(good, dtype=np.float64))
    allowed = int(np.floor(frr * good.size + 1e-9))
    if allowed == 0 and good.size >= TAIL_MIN_SCORES and frr > 0:
        return max(float(good[-1]), tail_bound(good, frr))
    return float(good[good.size - 1 - min(allowed, good.size - 1)]) if allowed < good.size else float(good[0]) - 1e-12


def f1_optimal(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > threshold`` against ``labels`` (True = defective)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        raise ConfigError("the f1 policy needs both good and defective images in the validation set")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # threshold just below each distinct score: flag it and all above
    tp, fp, cut = tp[last], fp[last], s[last]
    f1 = 2 * tp / (tp + fp + labels.sum())
    best = int(np.argmax(f1))
    below = s[s < cut[best]]
    threshold = (cut[best] + below.max()) / 2 if below.size else cut[best] - 1e-12
    return float(threshold), float(f1[best])


def false_reject_rate(good: np.ndarray, threshold: float) -> float:
    """Share of good scores ``threshold`` rejects (NaN when there are none: nothing to tell)."""
    good = np.asarray(good)
    return float((good > threshold).mean()) if good.size else float("nan")


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """How many labels (True = defect) say defect and how many say good part."""
    defects = int(np.count_nonzero(labels))
    return {"defects": defects, "good": int(np.size(labels)) - defects}


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """What ``score > threshold`` does on labelled items (True = defect): the counts a line manager reads."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    flagged = scores > threshold
    good, bad = int((~labels).sum()), int(labels.sum())
    false_alarms, escapes = int((flagged & ~labels).sum()), int((~flagged & labels).sum())
    return {
        "threshold": float(threshold),
        "items": int(labels.size),
        "defects": bad,
        "caught": bad - escapes,
        "escapes": escapes,
        "false_alarms": false_alarms,
        "escape_rate": escapes / bad if bad else None,
        "false_reject_rate": false_alarms / good if good else None,
    }
