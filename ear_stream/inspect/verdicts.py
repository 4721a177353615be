"""What one scored batch becomes: :class:`BatchResult`, with verdicts that fail closed.

Owns the rule every entry point shares: an image passes only when its score is a number at or
below the threshold and the out-of-distribution check can judge it; NaN on either side, or a
frame the model cannot judge, is an anomaly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .inputs import Images
from .ood import OODCheck


@dataclass
class BatchResult:
    """Per-image outputs of one batch; arrays are float32 numpy, maps stay tensors."""

    scores: np.ndarray
    normalized: np.ndarray
    #: fail closed: a NaN/inf score counts as anomalous, never as a pass; callers treat
    #: ``~finite`` entries as errors (stream DLQ, ``score`` failures, ``eval`` refusal)
    is_anomaly: np.ndarray
    mask_ratio: np.ndarray
    #: [B, 1, H, W], or (native resolution, sizes differ) a list of [1, H, W]; ``maps[i]`` works for both
    maps: Images | None = None
    recon: Images | None = None
    composite: Images | None = None
    #: the excised region S [B, 1, H, W] (with ``want_recon``): what the report overlays on the input
    mask: Images | None = None
    #: per image, its defect regions (``want_regions``): boxes in original pixels, area, peak, mean
    regions: list[list[dict]] | None = None
    #: [B, len(ood.FEATURES)] global statistics of each image and its recovery (:mod:`.ood`)
    features: np.ndarray | None = None
    #: per image, why the model cannot judge it (``out_of_distribution: …``) or None; such images are anomalies
    ood: list[str | None] | None = None

    @property
    def finite(self) -> np.ndarray:
        """Per image: the score is a number. A diverged model (NaN/inf reconstruction) makes it False."""
        return np.isfinite(self.scores)


def batch_result(
    scores: torch.Tensor,
    ratio: torch.Tensor,
    threshold: float,
    ood_check: OODCheck | None,
    features: np.ndarray | None = None,
    **outputs,
) -> BatchResult:
    """Scores and mask ratios of a batch → its :class:`BatchResult`; ``outputs``: the optional fields
    (maps, recon, composite, mask, regions) as the caller asked for them."""
    scores_np = scores.float().cpu().numpy().astype(np.float32)
    ood = None if ood_check is None or features is None else ood_check.reasons(features)
    is_anomaly = ~(scores_np <= threshold)  # fail closed: NaN on either side is an anomaly
    if ood is not None:  # a frame the model cannot judge never passes
        is_anomaly |= np.array([r is not None for r in ood], dtype=bool)
    return BatchResult(
        scores=scores_np,
        normalized=(scores_np / max(threshold, 1e-12)).astype(np.float32),
        is_anomaly=is_anomaly,
        mask_ratio=ratio.float().cpu().numpy().astype(np.float32),
        features=features,
        ood=ood,
        **outputs,
    )
