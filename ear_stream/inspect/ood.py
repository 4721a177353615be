"""Fail closed on frames the model cannot judge: an image-level out-of-distribution check.

The anomaly score asks "does the recovery differ from the input *locally*". A frame that is
not the product at all — sensor noise, a lens cap, a saturated sensor, an inverted or foreign
image, the wrong zoom — can recover smoothly everywhere and score *low*: random-noise frames
scored 0.004 against a threshold of 0.458 and passed as good. So every scored image also gets
a handful of global statistics (brightness, contrast, skew, fine and coarse gradient energy,
colourfulness, mean recovery error), and each is compared with the same statistics of the
held-out good images, in units of their spread. An image whose largest deviation passes the
stored bound is flagged ``out_of_distribution`` with the statistic that moved
(docs/design.md, "Out-of-distribution check").

The statistics are calibrated once, with the threshold, on the held-out good images, and kept in
the manifest (``calibration.ood``); a model trained before the check existed has none and is
not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: the statistics, in the order of :func:`image_features`' columns
FEATURES = (
    "gray_mean",
    "gray_log_std",
    "gray_skew",
    "log_gradient_fine",
    "log_gradient_coarse",
    "colourfulness",
    "log_recovery_error",
)
#: smallest spread per statistic, so a held-out set that happens to agree closely (gray images: zero
#: colourfulness) does not turn ordinary variation into huge deviations
SPREAD_FLOOR = np.array([0.05, 0.15, 0.5, 0.15, 0.15, 0.03, 0.2])
#: an image is out of distribution when a statistic lies more than this many spreads from the held-out
#: median (or more than OOD_MARGIN × the farthest held-out image, if that is farther): far outside what
#: good parts do, so a real defect, which changes a small region, does not reach it
OOD_MIN_BOUND = 8.0
OOD_MARGIN = 2.0
#: the reason written in the result row's ``frame_check`` column
OOD_REASON = "out_of_distribution"
_EPS = 1e-5


def _gradient(gray: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference per image of a [B, H, W] grey batch."""
    dx = (
        (gray[:, :, 1:] - gray[:, :, :-1]).abs().flatten(1).mean(1) if gray.shape[-1] > 1 else gray.new_zeros(len(gray))
    )
    dy = (
        (gray[:, 1:, :] - gray[:, :-1, :]).abs().flatten(1).mean(1) if gray.shape[-2] > 1 else gray.new_zeros(len(gray))
    )
    return dx + dy


@torch.no_grad()
def image_features(images: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """[B, len(FEATURES)] statistics of a [B, 3, H, W] batch in [0, 1] and its recovery (float64 numpy).

    A few reductions over the batch the pipeline already holds: no extra network pass.
    """
    x = images.float()
    gray = x.mean(1)
    flat = gray.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, unbiased=False)
    skew = ((flat - mean[:, None]) ** 3).mean(1) / std.clamp_min(1e-3) ** 3
    coarse = F.avg_pool2d(gray[:, None], 4, ceil_mode=True)[:, 0] if min(gray.shape[-2:]) >= 8 else gray
    colour = (x.amax(1) - x.amin(1)).flatten(1).mean(1)
    error = (recon.float() - x).abs().flatten(1).mean(1)
    cols = [
        mean,
        torch.log(std + _EPS),
        skew.clamp(-50, 50),
        torch.log(_gradient(gray) + _EPS),
        torch.log(_gradient(coarse) + _EPS),
        colour,
        torch.log(torch.nan_to_num(error, nan=1e3, posinf=1e3) + _EPS),
    ]
    return torch.stack(cols, 1).cpu().double().numpy()


@dataclass(frozen=True)
class OODCheck:
    """The held-out good images' statistics: centre and spread per feature, and the bound."""

    center: np.ndarray
    spread: np.ndarray
    bound: float

    @classmethod
    def fit(cls, features: np.ndarray) -> OODCheck:
        """Calibrate on the held-out good images' features ([n, k])."""
        feats = np.asarray(features, dtype=np.float64)
        center = np.median(feats, axis=0)
        mad = 1.4826 * np.median(np.abs(feats - center), axis=0)
        spread = np.maximum.reduce([feats.std(axis=0), mad, SPREAD_FLOOR[: feats.shape[1]]])
        farthest = float(np.max(np.abs(feats - center) / spread)) if feats.size else 0.0
        return cls(center, spread, max(OOD_MIN_BOUND, OOD_MARGIN * farthest))

    def deviations(self, features: np.ndarray) -> np.ndarray:
        """[B, k] distance of each statistic from the held-out median, in spreads (NaN counts as infinitely far)."""
        z = np.abs(np.asarray(features, dtype=np.float64) - self.center) / self.spread
        return np.nan_to_num(z, nan=np.inf)

    def reasons(self, features: np.ndarray) -> list[str | None]:
        """Per image: None, or ``out_of_distribution: <statistic> <z> spreads from good (bound <b>)``."""
        out: list[str | None] = []
        for row in self.deviations(features):
            worst = int(np.argmax(row))
            if row[worst] > self.bound:
                out.append(
                    f"{OOD_REASON}: {FEATURES[worst]} {row[worst]:.1f} spreads from good parts (bound {self.bound:.1f})"
                )
            else:
                out.append(None)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "center": [float(v) for v in self.center],
            "spread": [float(v) for v in self.spread],
            "bound": float(self.bound),
        }

    @classmethod
    def from_calibration(cls, calibration: dict[str, Any]) -> OODCheck | None:
        """The check a manifest's calibration stores, or None (older model, or other features)."""
        data = calibration.get("ood") if isinstance(calibration, dict) else None
        if not isinstance(data, dict) or data.get("features") != list(FEATURES):
            return None
        try:
            center = np.asarray(data["center"], dtype=np.float64)
            spread = np.asarray(data["spread"], dtype=np.float64)
            bound = float(data["bound"])
        except (KeyError, TypeError, ValueError):
            return None
        ok = center.shape == spread.shape == (len(FEATURES),) and np.isfinite(center).all()
        if not ok or not (np.isfinite(spread).all() and (spread > 0).all() and np.isfinite(bound) and bound > 0):
            return None
        return cls(center, spread, bound)
