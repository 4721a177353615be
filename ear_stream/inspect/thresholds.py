"""Revising a model's stored thresholds without retraining: propose, check, write, roll back.

``ear-stream threshold`` and the review station change a model's thresholds only through here:
:func:`propose` applies named policies (:mod:`.threshold_policies`) to the calibration the manifest
keeps (:mod:`.calibration` rescores it for older models), :func:`revise` checks the result (the
held-out false-reject bound :data:`MAX_HELD_OUT_FRR`, the reviewed-label minimum, the confirmed
proposal) and rewrites the manifest atomically with its history (:func:`revise_manifest`), and
:func:`rollback` restores earlier thresholds as a new revision.

The policy and statistics names this module exported before they moved (``parse_policy``,
``image_threshold``, ``f1_optimal``, ``held_out_images``, …) are re-exported, so existing imports keep working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io.labels import MIN_LABELS_PER_CLASS, LabelStore
from ..model.artifact import Manifest, load_manifest, write_manifest
from ..model.config import DEFAULT_IMAGE_POLICY, DEFAULT_PIXEL_POLICY
from .calibration import held_out_images, recalibrate, rescore_holdout
from .threshold_policies import (
    F1Policy,
    ThresholdPolicy,
    image_threshold,
    parse_policy,
    pixel_threshold,
    policy_help,
    policy_names,
)
from .threshold_stats import (
    PIXEL_GRID,
    TAIL_CONFIDENCE,
    TAIL_MIN_SCORES,
    class_counts,
    f1_optimal,
    false_reject_rate,
    good_score_stats,
    lowest_threshold_with_frr,
    operating_point,
    pixel_quantile_grid,
    tail_bound,
)

__all__ = [
    "DEFAULT_IMAGE_POLICY",
    "DEFAULT_PIXEL_POLICY",
    "MAX_HELD_OUT_FRR",
    "MIN_LABELS_PER_CLASS",
    "PIXEL_GRID",
    "TAIL_CONFIDENCE",
    "TAIL_MIN_SCORES",
    "THRESHOLD_FIELDS",
    "Refused",
    "Revision",
    "ThresholdPolicy",
    "class_counts",
    "f1_optimal",
    "false_reject_rate",
    "good_score_stats",
    "held_out_images",
    "held_out_refusal",
    "image_threshold",
    "label_refusal",
    "labelled_scores",
    "lowest_threshold_with_frr",
    "operating_point",
    "parse_policy",
    "pixel_quantile_grid",
    "pixel_threshold",
    "policy_help",
    "policy_names",
    "propose",
    "recalibrate",
    "rescore_holdout",
    "reviewed_scores",
    "revise",
    "revise_manifest",
    "rollback",
    "rollback_entry",
    "tail_bound",
]

#: the largest share of the model's held-out good images a revised threshold may reject: above it the
#: ``threshold`` verb refuses without ``--force`` and the review page refuses outright (an ``f1`` threshold
#: from a few reviewed rejects, or ``simf1``, easily lands inside the good scores and rejects most good parts)
MAX_HELD_OUT_FRR = 0.20
#: the manifest fields a rollback restores
THRESHOLD_FIELDS = ("threshold", "threshold_policy", "pixel_threshold", "pixel_policy")


class Refused(ConfigError):
    """A threshold revision the safety checks refuse; nothing was written (``threshold --force`` overrides
    the held-out false-reject bound, ``--min-labels`` the label minimum; the review page overrides nothing)."""

    def __init__(self, reason: str, forceable: bool = False) -> None:
        super().__init__(reason)
        #: whether ``force`` would have let it through
        self.forceable = forceable


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


def label_refusal(labels: np.ndarray, minimum: int) -> str | None:
    """Why reviewed labels are too few to choose a threshold from (None: enough of each class)."""
    counts = class_counts(labels)
    if min(counts.values()) >= minimum:
        return None
    return (
        f"a threshold from reviewed items needs at least {minimum} labels of each class judged by these weights "
        f"(there are {counts['defects']} defects and {counts['good']} good parts)"
    )


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
    model_dir: str | Path,
    data_root: str | Path | None,
    category: str | None,
    device: str = "auto",
    policy: str = F1Policy.name,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (True = defective) of a labelled MVTec-layout set, for a policy that needs labels
    (``policy``, named in the error when there is no set)."""
    from ..io.datasets import test_samples

    if data_root is None or category is None:
        raise ConfigError(
            f"the {policy} policy needs labelled items: reviewed labels (--labels DIR) or a labelled set "
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
    if img.needs_labels:
        labelled = (
            _enough_reviewed(reviewed_scores(labels_dir, manifest.model_version), minimum)
            if labels_dir is not None
            else labelled_scores(model_dir, data_root, category, device, img.name)
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
