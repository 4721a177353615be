"""Decision thresholds chosen by a named policy, recomputable without retraining.

The model directory keeps the held-out good images' scores (``calibration.scores``)
and a quantile grid of their map pixels (``calibration.pixel_quantiles``), so any
policy can be re-applied later (``ear-stream threshold``). A policy is a string:

* ``sigma:K``   — max(mean + K·std, max) of held-out good scores (the training default, K = 3)
* ``quantile:Q`` — the Q-quantile of held-out good scores
* ``fpr:F``     — the lowest threshold whose false-reject rate on held-out good images is ≤ F
* ``f1``        — the F1-optimal threshold on labelled items (``--labels`` from review, or ``--data``)
* ``simf1``     — the F1-optimal threshold between the held-out good images and the same images with
  a simulated defect each (``calibration.simulated_scores``): labelled without one real defect
* ``manual:T``  — T as given

Pixel thresholds (which pixels of a map form defect regions) take the same policies
over the held-out maps' pixels (``f1`` excepted), plus ``image``: the image threshold
itself, so an image has regions exactly when its score flags it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..io.labels import MIN_LABELS_PER_CLASS, LabelStore
from ..model.artifact import Manifest, load_manifest, write_manifest
from ..model.config import DEFAULT_IMAGE_POLICY, DEFAULT_PIXEL_POLICY

if TYPE_CHECKING:  # the pipeline imports this module's neighbours: no import at run time
    from .pipeline import Images, Pipeline

__all__ = [
    "DEFAULT_IMAGE_POLICY",
    "DEFAULT_PIXEL_POLICY",
    "IMAGE_POLICIES",
    "PIXEL_POLICIES",
    "Policy",
    "image_threshold",
    "parse_policy",
]

IMAGE_POLICIES = ("sigma", "quantile", "fpr", "f1", "simf1", "manual")
PIXEL_POLICIES = ("image", "sigma", "quantile", "fpr", "manual")
#: points of the stored pixel quantile grid (0, 0.1 %, …, 100 %)
PIXEL_GRID = 1001
#: the largest share of the model's held-out good images a revised threshold may reject: above it the
#: ``threshold`` verb refuses without ``--force`` and the review page refuses outright (an ``f1`` threshold
#: from a few reviewed rejects, or ``simf1``, easily lands inside the good scores and rejects most good parts)
MAX_HELD_OUT_FRR = 0.20


class Refused(ConfigError):
    """A threshold revision the safety checks refuse; nothing was written (``threshold --force`` overrides
    the held-out false-reject bound, ``--min-labels`` the label minimum; the review page overrides nothing)."""

    def __init__(self, reason: str, forceable: bool = False) -> None:
        super().__init__(reason)
        #: whether ``force`` would have let it through
        self.forceable = forceable


@dataclass(frozen=True)
class Policy:
    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @property
    def number(self) -> float:
        """The policy's parameter (K, Q, F, T); parse_policy guarantees one for the kinds that take it."""
        if self.value is None:
            raise ConfigError(f"policy {self.kind} takes no number")
        return float(self.value)


def parse_policy(text: str, pixel: bool = False) -> Policy:
    """``sigma:3`` → Policy("sigma", 3.0); clear errors for anything else."""
    allowed = PIXEL_POLICIES if pixel else IMAGE_POLICIES
    kind, _, raw = text.strip().partition(":")
    if kind not in allowed:
        raise ConfigError(
            f"unknown threshold policy {text!r}: use one of {', '.join(allowed)} (e.g. sigma:3, fpr:0.01)"
        )
    if kind in ("f1", "simf1", "image"):
        if raw:
            raise ConfigError(f"policy {kind} takes no value, got {text!r}")
        return Policy(kind)
    try:
        value = float(raw)
    except ValueError:
        example = {"sigma": "3", "quantile": "0.99", "fpr": "0.01", "manual": "0.5"}[kind]
        raise ConfigError(f"policy {kind} needs a number, e.g. {kind}:{example}, got {text!r}") from None
    if not math.isfinite(value):  # NaN compares false with every score: it would pass every image
        raise ConfigError(f"policy {kind} needs a finite number, got {text!r}")
    if kind in ("quantile", "fpr") and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{kind} must be in [0, 1], got {value}")
    if kind == "sigma" and value < 0:
        raise ConfigError(f"sigma must be >= 0, got {value}")
    return Policy(kind, value)


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


#: confidence of the small-sample tail bound of ``fpr:F`` (see :func:`tail_bound`), and the fewest scores it
#: is fitted to: below 10 the fitted spread is itself too uncertain (with 5 scores the bound reached 6x the
#: maximum and passed every defect of the demo), so the sample maximum stays the threshold
TAIL_CONFIDENCE = 0.9
TAIL_MIN_SCORES = 10


def tail_bound(good: np.ndarray, frr: float, confidence: float = TAIL_CONFIDENCE) -> float:
    """Upper tolerance bound of the good scores: with ``confidence``, at most ``frr`` of good parts lie above it.

    Log-normal model of the scores (they are positive and right-skewed) and the exact one-sided normal
    tolerance factor (noncentral t). It is what ``fpr:F`` uses when the held-out set is too small to
    resolve F (fewer than 1/F images: a sample maximum would be the threshold, resting on one image).
    """
    from scipy.stats import nct, norm

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


def image_threshold(
    policy: Policy,
    good: np.ndarray,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
    simulated: np.ndarray | None = None,
) -> float:
    """The image threshold a policy gives on held-out good scores (+ a labelled set for ``f1``, the
    simulated-defect scores for ``simf1``)."""
    good = np.asarray(good, dtype=np.float64)
    if policy.kind == "manual":
        return float(policy.number)
    if policy.kind == "simf1":
        sim = np.asarray([] if simulated is None else simulated, dtype=np.float64)
        if sim.size == 0 or good.size == 0:
            raise ConfigError(
                "the simf1 policy needs the simulated-defect scores of the held-out images, which this model "
                "does not store (trained before they existed, or native-resolution): retrain, or use sigma/fpr"
            )
        return f1_optimal(np.r_[good, sim], np.r_[np.zeros(good.size, bool), np.ones(sim.size, bool)])[0]
    if policy.kind == "f1":
        if labelled is None:
            raise ConfigError(
                "the f1 policy needs a labelled validation set: pass --labels DIR or --data ROOT --category C"
            )
        return f1_optimal(*labelled)[0]
    if good.size == 0:
        raise ConfigError("no held-out good scores stored: pass --data ROOT --category C to rescore them")
    if policy.kind == "sigma":
        return max(float(good.mean() + policy.number * good.std()), float(good.max()))
    if policy.kind == "quantile":
        return float(np.quantile(good, policy.number))
    return lowest_threshold_with_frr(good, policy.number)


def pixel_quantile_grid(values: np.ndarray) -> list[float]:
    """Held-out map pixels as a quantile grid (what pixel policies need, in 1001 numbers)."""
    return [float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, PIXEL_GRID))]


def pixel_threshold(policy: Policy, image_thr: float, calibration: dict[str, Any]) -> float:
    if policy.kind == "image":
        return float(image_thr)
    if policy.kind == "manual":
        return float(policy.number)
    grid = np.asarray(calibration.get("pixel_quantiles") or [], dtype=np.float64)
    if grid.size == 0:
        raise ConfigError("no pixel statistics stored in this model: pass --data ROOT --category C to rescore them")
    qs = np.linspace(0, 1, grid.size)
    if policy.kind == "quantile":
        return float(np.interp(policy.number, qs, grid))
    if policy.kind == "fpr":
        return float(np.interp(1.0 - policy.number, qs, grid))
    mean, std = calibration.get("pixel_mean"), calibration.get("pixel_std")
    if mean is None or std is None:
        raise ConfigError("no pixel statistics stored in this model: pass --data ROOT --category C to rescore them")
    return float(mean + policy.number * std)


def false_reject_rate(good: np.ndarray, threshold: float) -> float:
    good = np.asarray(good)
    return float((good > threshold).mean()) if good.size else float("nan")


def held_out_refusal(good: np.ndarray, threshold: float, bound: float = MAX_HELD_OUT_FRR) -> str | None:
    """Why ``threshold`` must not be applied unforced (None: it may): it rejects more than ``bound`` of the
    model's held-out good images, or no held-out scores are stored to tell (a check that cannot be made fails)."""
    frr = false_reject_rate(good, threshold)
    if math.isnan(frr):
        return "no held-out good scores are stored to check its false-reject rate (pass --data ROOT to rescore them)"
    if frr > bound:
        return (
            f"threshold {threshold:.6g} rejects {frr:.1%} of the model's held-out good images "
            f"(at most {bound:.0%} allowed)"
        )
    return None


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """How many labels (True = defect) say defect and how many say good part."""
    defects = int(np.count_nonzero(labels))
    return {"defects": defects, "good": int(np.size(labels)) - defects}


def label_refusal(labels: np.ndarray, minimum: int) -> str | None:
    """Why reviewed labels are too few to choose a threshold from (None: enough of each class)."""
    counts = class_counts(labels)
    if min(counts.values()) >= minimum:
        return None
    return (
        f"a threshold from reviewed items needs at least {minimum} labels of each class judged by these weights "
        f"(there are {counts['defects']} defects and {counts['good']} good parts)"
    )


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


def revise_manifest(model_dir: str | Path, changes: dict[str, Any], note: dict[str, Any]) -> Manifest:
    """Apply ``changes`` (Manifest fields) and rewrite manifest.json atomically, keeping history.

    The previous threshold settings go to ``threshold_history`` with a timestamp, and
    ``threshold_revision`` grows by one: ``model_version`` then tells this revision
    from the weights' first (``<weights hash>.t<revision>``).
    """
    manifest = load_manifest(model_dir)  # refuses a broken manifest before touching it
    manifest.threshold_history.append(
        {
            "threshold": manifest.threshold,
            "threshold_policy": manifest.threshold_policy,  # older manifests: the training rule, sigma:3
            "pixel_threshold": manifest.pixel_threshold,
            "pixel_policy": manifest.pixel_policy,
            "revision": manifest.threshold_revision,
            "replaced_at": datetime.now(timezone.utc).isoformat(),
            **note,
        }
    )
    for key, value in changes.items():
        setattr(manifest, key, value)
    manifest.threshold_revision += 1
    write_manifest(model_dir, manifest)
    return manifest


def held_out_images(manifest: Manifest, data_root: str | Path) -> Images:
    """A model's held-out good images, loaded as it scores them: the hold-out split is a pure function of
    the training images, the seed and the fraction in the manifest."""
    from ..io.datasets import train_images
    from .calibration import split_holdout
    from .pipeline import load_images

    t = manifest.training
    files = train_images(data_root, t["category"])
    _, hold = split_holdout(len(files), float(t.get("holdout_fraction", 0.1)), int(t.get("seed", 0)))
    return load_images(manifest.config, [files[i] for i in hold], progress=False)


def rescore_holdout(model_dir: str | Path, data_root: str | Path, device: str = "auto") -> dict[str, Any]:
    """Recompute the calibration statistics (scores and pixel grid) of a model's held-out good images
    (for models written before the scores were kept)."""
    from .calibration import calibrate
    from .pipeline import Pipeline

    manifest = load_manifest(model_dir)
    return calibrate(Pipeline.from_artifact(model_dir, device=device), held_out_images(manifest, data_root))[1]


def recalibrate(pipe: Pipeline, manifest: Manifest, data_root: str | Path) -> float:
    """Re-derive ``pipe``'s image (and pixel) threshold under its *current* scoring with the model's own
    policies, from its held-out good images; returns the image threshold.

    A stored threshold belongs to the scoring it was calibrated under: after ``eval --box`` or a study's
    scoring choice, comparing the new scores with it would report meaningless false rejects and escapes.
    """
    from .calibration import calibrate

    threshold, stats = calibrate(pipe, held_out_images(manifest, data_root), manifest.threshold_policy)
    pipe.threshold = threshold
    if manifest.pixel_policy != "image":
        pipe.pixel_threshold = pixel_threshold(parse_policy(manifest.pixel_policy, pixel=True), threshold, stats)
    return threshold


def reviewed_scores(labels_dir: str | Path, model_version: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (True = defect) of the items people reviewed (``ear-stream review``) under these weights."""
    scores, labels, other = LabelStore(labels_dir).scores_for(model_version)
    if labels.size == 0:
        raise ConfigError(
            f"no reviewed labels for the weights of {model_version} in {labels_dir}"
            + (f" ({other} labels judge other weights: their scores are not comparable)" if other else "")
        )
    return scores, labels


def labelled_scores(
    model_dir: str | Path, data_root: str | Path | None, category: str | None, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (True = defective) of a labelled MVTec-layout set, for the ``f1`` policy."""
    from ..io.datasets import test_samples

    if data_root is None or category is None:
        raise ConfigError(
            "the f1 policy needs labelled items: reviewed labels (--labels DIR) or a labelled set "
            "(--data ROOT --category C)"
        )
    from .pipeline import Pipeline, load_images

    pipe = Pipeline.from_artifact(model_dir, device=device)
    samples = test_samples(data_root, category)
    images = load_images(pipe.config, [s.path for s in samples], progress=False)
    scores = pipe.score_batches(images, 16)[0]
    return scores, np.array([s.defect != "good" for s in samples])


@dataclass
class Revision:
    """A threshold revision computed but not written (:func:`propose`): what :func:`revise` writes.

    The review page shows one before anyone confirms it; ``refusal`` says why the held-out check refuses it.
    """

    changes: dict[str, Any]
    note: dict[str, Any]
    report: dict[str, Any]
    refusal: str | None


def propose(
    model_dir: str | Path,
    image_policy: str | None,
    pixel_policy: str | None,
    data_root: str | Path | None = None,
    category: str | None = None,
    device: str = "auto",
    labels_dir: str | Path | None = None,
    min_labels: int | None = None,
) -> Revision:
    """What applying the policies would write, and what it would do (nothing is written).

    ``data_root`` (+ ``category`` for ``f1``) lets it rescore the held-out good images of an
    older model and score a labelled validation set; ``labels_dir`` gives ``f1`` the items
    people reviewed instead (their stored scores, no rescoring), refused below ``min_labels`` per class
    (None: :data:`~ear_stream.io.labels.MIN_LABELS_PER_CLASS`).
    """
    manifest = load_manifest(model_dir)
    img = parse_policy(image_policy or manifest.threshold_policy)
    pix = parse_policy(pixel_policy or manifest.pixel_policy, pixel=True)
    minimum = MIN_LABELS_PER_CLASS if min_labels is None else min_labels
    calibration = dict(manifest.calibration)
    changes: dict[str, Any] = {}
    if data_root is not None and (not calibration.get("scores") or not calibration.get("pixel_quantiles")):
        calibration.update(rescore_holdout(model_dir, data_root, device))
        changes["calibration"] = calibration
    labelled = None
    if img.kind == "f1":
        labelled = (
            _enough_reviewed(reviewed_scores(labels_dir, manifest.model_version), minimum)
            if labels_dir is not None
            else labelled_scores(model_dir, data_root, category, device)
        )
    good = np.asarray(calibration.get("scores") or [], dtype=np.float64)
    threshold = image_threshold(img, good, labelled, calibration.get("simulated_scores"))
    pixel = pixel_threshold(pix, threshold, calibration)
    if not (math.isfinite(threshold) and math.isfinite(pixel)):
        raise ConfigError(f"policy {img} / {pix} gave a non-finite threshold ({threshold}, {pixel}): nothing written")
    changes.update(threshold=threshold, threshold_policy=str(img), pixel_threshold=pixel, pixel_policy=str(pix))
    refusal = held_out_refusal(good, threshold)
    report = {
        "previous": {
            "threshold": manifest.threshold,
            "policy": manifest.threshold_policy,
            "model_version": manifest.model_version,
        },
        "threshold": threshold,
        "policy": str(img),
        "pixel_threshold": pixel,
        "pixel_policy": str(pix),
        "false_reject_rate_on_calibration": false_reject_rate(good, threshold),
        "max_false_reject_rate_on_calibration": MAX_HELD_OUT_FRR,
        "refused": refusal,
    }
    if labelled is not None:
        report.update(_labelled_report(*labelled, threshold, manifest.threshold))
        report["labelled_from"] = "review" if labels_dir is not None else "dataset"
        if labels_dir is not None:
            report["labels"] = {"minimum_per_class": minimum, **class_counts(labelled[1])}
    note = {"policy_applied": str(img), "pixel_policy_applied": str(pix)}
    return Revision(changes, note, report, refusal)


def _enough_reviewed(labelled: tuple[np.ndarray, np.ndarray], minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """The reviewed scores and labels, or :class:`Refused` when a class has fewer than ``minimum``."""
    refusal = label_refusal(labelled[1], minimum)
    if refusal:
        raise Refused(refusal)
    return labelled


def _labelled_report(scores: np.ndarray, labels: np.ndarray, threshold: float, before: float) -> dict[str, Any]:
    """What the new threshold does on the labelled items, next to what the current one does."""
    return {
        "f1": f1_optimal(scores, labels)[1],
        "escape_rate_on_validation": float((scores[labels] <= threshold).mean()),
        "operating_point": operating_point(scores, labels, threshold),
        "operating_point_before": operating_point(scores, labels, before),
    }


def revise(
    model_dir: str | Path,
    image_policy: str | None,
    pixel_policy: str | None,
    data_root: str | Path | None = None,
    category: str | None = None,
    device: str = "auto",
    labels_dir: str | Path | None = None,
    *,
    min_labels: int | None = None,
    force: bool = False,
    reviewer: str | None = None,
    expect: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Apply threshold policies to a model directory without retraining; returns what changed.

    :func:`propose`, then its checks: a threshold above the held-out false-reject bound is
    :class:`Refused` unless ``force``; ``expect`` (the model version and threshold someone
    confirmed) refuses a revision that is no longer the one shown. ``reviewer`` goes into the
    threshold history with the change.
    """
    rev = propose(model_dir, image_policy, pixel_policy, data_root, category, device, labels_dir, min_labels)
    if rev.refusal and not force:
        raise Refused(f"{rev.refusal}: nothing written", forceable=True)
    if expect is not None:
        _check_expected(rev, *expect)
    revised = revise_manifest(model_dir, rev.changes, _signed(rev.note, reviewer))
    return {**rev.report, "model_version": revised.model_version, "reviewer": reviewer, "forced": bool(rev.refusal)}


def _check_expected(rev: Revision, model_version: str, threshold: float) -> None:
    """Refuse when the revision differs from the one confirmed (labels or another revision came in between)."""
    same_model = rev.report["previous"]["model_version"] == model_version
    if not (same_model and math.isclose(rev.report["threshold"], float(threshold), rel_tol=1e-9, abs_tol=1e-12)):
        raise Refused("the proposal changed since it was shown (new labels or another revision): review it again")


def _signed(note: dict[str, Any], reviewer: str | None) -> dict[str, Any]:
    """The history note with who made the change (when known)."""
    return {**note, "reviewer": reviewer} if reviewer else dict(note)


#: the manifest fields a rollback restores
THRESHOLD_FIELDS = ("threshold", "threshold_policy", "pixel_threshold", "pixel_policy")


def rollback_entry(manifest: Manifest) -> dict[str, Any]:
    """The history entry holding the thresholds in force before the current ones.

    Each entry records the revision it replaced and, in its note, how the next revision came to be.
    A revision that was itself a rollback stands for the one it restored, so rolling back again goes
    one step further back instead of toggling between two revisions.
    """
    by_revision = {h.get("revision"): h for h in manifest.threshold_history}
    origin = manifest.threshold_revision
    for _ in range(len(by_revision) + 1):  # rollback_to always points back: a bound for hand-edited manifests
        made = by_revision.get(origin - 1, {})
        if "rollback_to" not in made:
            break
        origin = int(made["rollback_to"])
    entry = by_revision.get(origin - 1)
    if entry is None:
        raise ConfigError(f"no earlier thresholds to roll back to (revision {manifest.threshold_revision})")
    return entry


def rollback(model_dir: str | Path, *, force: bool = False, reviewer: str | None = None) -> dict[str, Any]:
    """Restore the previous thresholds as a new revision (history kept, written atomically by
    :func:`revise_manifest`): workers reload it like any revision, and it can itself be rolled back."""
    manifest = load_manifest(model_dir)
    entry = rollback_entry(manifest)
    changes = {f: entry.get(f, getattr(manifest, f)) for f in THRESHOLD_FIELDS}  # exactly as they were
    good = np.asarray(manifest.calibration.get("scores") or [], dtype=np.float64)
    refusal = held_out_refusal(good, float(changes["threshold"]))
    if refusal and not force:
        raise Refused(f"{refusal}: nothing written", forceable=True)
    revised = revise_manifest(model_dir, changes, _signed({"rollback_to": entry["revision"]}, reviewer))
    return {
        "previous": {"threshold": manifest.threshold, "policy": manifest.threshold_policy},
        "restored_revision": entry["revision"],
        "threshold": revised.threshold,
        "policy": revised.threshold_policy,
        "pixel_threshold": revised.pixel_threshold,
        "pixel_policy": revised.pixel_policy,
        "model_version": revised.model_version,
        "false_reject_rate_on_calibration": false_reject_rate(good, revised.threshold),
        "reviewer": reviewer,
        "forced": bool(refusal),
    }
