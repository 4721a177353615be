"""Whether a refined model may replace its parent (docs/design.md, "Learning from the line"): the figures.

``refine`` scores the held-out labelled items (:mod:`.labelled`: by hash, never trained on) with the parent at
its threshold and with the candidate at its own, and stores both sets of figures in the candidate's lineage.
``promote`` decides on them: a candidate is refused, with the figures, when it ranks the held-out items worse
(lower image AUROC), passes more of their defects, or makes more mistakes at its threshold (escapes + false
rejects) than its parent, or when the held-out labels hold fewer than :data:`MIN_HELDOUT_PER_CLASS` defects or
goods (nothing shows it is not worse).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..model.artifact import Manifest


#: the fewest held-out defects and goods a comparison needs before ``promote`` believes it
MIN_HELDOUT_PER_CLASS = 3


@dataclass(frozen=True)
class HeldOutFigures:
    """One model on the held-out labels, at the threshold it would use."""

    threshold: float
    auroc: float | None  # None when a class is missing
    escapes: int  # confirmed defects at or below the threshold (passed)
    false_rejects: int  # confirmed goods above it (flagged)
    n_defect: int
    n_good: int

    @classmethod
    def of(cls, scores: np.ndarray, defect: np.ndarray, threshold: float) -> HeldOutFigures:
        scores, defect = np.asarray(scores, dtype=np.float64), np.asarray(defect, dtype=bool)
        finite = np.isfinite(scores)
        if not finite.all():  # fail closed, as the line does: a score that is not a number is a flag, ranked top
            top = float(scores[finite].max()) + 1.0 if finite.any() else 1.0
            scores = np.where(finite, scores, max(top, float(threshold) + 1.0))
        both = defect.any() and (~defect).any()
        flagged = scores > threshold
        return cls(
            float(threshold),
            float(roc_auc_score(defect, scores)) if both else None,
            int((~flagged[defect]).sum()),
            int(flagged[~defect].sum()),
            int(defect.sum()),
            int((~defect).sum()),
        )

    @property
    def errors(self) -> int:
        return self.escapes + self.false_rejects

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        roc = "n/a" if self.auroc is None else f"{self.auroc:.3f}"
        return (
            f"AUROC {roc}, {self.escapes}/{self.n_defect} escapes, {self.false_rejects}/{self.n_good} false rejects "
            f"at threshold {self.threshold:.4g}"
        )


def refusal(parent: HeldOutFigures, candidate: HeldOutFigures) -> str | None:
    """Why the candidate must not replace the parent (None: it may), with both models' figures.

    Refused: fewer than :data:`MIN_HELDOUT_PER_CLASS` held-out defects or goods (one item is no evidence), a
    lower AUROC, more escapes (a missed defect is not bought back by fewer false alarms), or more mistakes.
    """
    figures = f"parent: {parent.describe()}; candidate: {candidate.describe()}"
    if min(candidate.n_defect, candidate.n_good) < MIN_HELDOUT_PER_CLASS:
        return (
            f"the held-out labels hold {candidate.n_defect} defect(s) and {candidate.n_good} good item(s), fewer "
            f"than {MIN_HELDOUT_PER_CLASS} of each: nothing shows the candidate is no worse; label more items and "
            f"refine again ({figures})"
        )
    if candidate.auroc is not None and parent.auroc is not None and candidate.auroc < parent.auroc:
        return f"the candidate ranks the held-out labels worse ({figures})"
    if candidate.escapes > parent.escapes:
        return f"the candidate passes more of the held-out defects ({figures})"
    if candidate.errors > parent.errors:
        return f"the candidate makes more mistakes on the held-out labels ({figures})"
    return None


def figures_of(data: dict[str, Any]) -> HeldOutFigures:
    return HeldOutFigures(**data)


def recomputed(manifest: Manifest, parent_threshold: float) -> tuple[HeldOutFigures, HeldOutFigures]:
    """(parent, candidate) figures from the held-out scores the candidate's lineage stores, at the threshold
    the parent runs with now and at the candidate's own: never the stored summary, which a revised parent
    threshold makes stale and an edited manifest could forge. :class:`ArtifactError` when they are not there."""
    from ..model.artifact import ArtifactError

    held = manifest.lineage.get("heldout") if isinstance(manifest.lineage, dict) else None
    if not isinstance(held, dict):
        raise ArtifactError("the candidate's lineage holds no held-out comparison (not written by refine?)")
    columns = [held.get(k) for k in ("parent_scores", "candidate_scores", "defect")]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:  # type: ignore[arg-type]
        raise ArtifactError("the candidate's held-out comparison is malformed (scores and labels of unequal length)")
    parent, candidate, defect = columns
    if not all(isinstance(v, bool) for v in defect) or not all(  # type: ignore[union-attr]
        isinstance(v, (int, float)) and not isinstance(v, bool)
        for v in [*parent, *candidate]  # type: ignore[misc]
    ):
        raise ArtifactError(
            "the candidate's held-out comparison is malformed (scores must be numbers, labels booleans)"
        )
    return (
        HeldOutFigures.of(np.asarray(parent, float), np.asarray(defect, bool), parent_threshold),
        HeldOutFigures.of(np.asarray(candidate, float), np.asarray(defect, bool), manifest.threshold),
    )


def check_candidate(models_dir: Path, product: str, candidate: Path, rollback: bool = False) -> Manifest:
    """The candidate's manifest when ``promote`` may make it ``product``'s model; ConfigError saying why not.

    Refused: the model the line runs already; a candidate without lineage (``rollback`` takes a version the line
    ran before, under ``.versions``, without a comparison: a person's decision); no model running to compare
    with; refined from another model than the one the line runs; worse or unproven on its held-out labels
    (:func:`refusal`, on the figures :func:`recomputed` from the stored scores).
    """
    from ..model.artifact import MANIFEST_FILE, load_manifest
    from ..model.deployment import VERSIONS

    manifest = load_manifest(candidate)
    current = Path(models_dir) / product
    running = load_manifest(current) if (current / MANIFEST_FILE).is_file() else None
    if running is not None and running.weights_sha256 == manifest.weights_sha256:
        raise ConfigError(f"{product} already runs {manifest.model_version}")
    if rollback:
        versions = (Path(models_dir) / VERSIONS / product).resolve()
        if not Path(candidate).resolve().is_relative_to(versions):
            raise ConfigError(f"--rollback takes a version the line ran before, under {versions}, not {candidate}")
        return manifest
    if not manifest.lineage:
        raise ConfigError(
            f"{candidate} has no lineage (not refined by `ear-stream refine`): nothing shows it is no worse; "
            f"to return to a version the line ran before, pass --rollback --candidate {VERSIONS}/{product}/<version>"
        )
    if running is None:
        raise ConfigError(f"{product} runs no model in {models_dir}: a candidate is judged against its parent")
    if manifest.lineage.get("parent_weights_sha256") != running.weights_sha256:
        raise ConfigError(
            f"the candidate was refined from {manifest.lineage.get('parent_version')}, but {product} runs "
            f"{running.model_version} now: refine again from the model the line runs"
        )
    why = refusal(*recomputed(manifest, running.threshold))
    if why is not None:
        raise ConfigError(f"not promoting {product}: {why}")
    return manifest
