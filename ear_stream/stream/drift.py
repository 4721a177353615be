"""Drift: have the line's images moved away from what the model was calibrated on?

Both views compare with the held-out good images stored in the manifest's calibration:

* **Inputs** (``shift``), which raise the alert: the median of each image statistic of the
  out-of-distribution check (:mod:`ear_stream.inspect.ood`: brightness, contrast, gradient energy,
  recovery error …) over the last ``window`` scored frames, as a distance from the held-out median in
  held-out spreads. A defect changes a small region and barely moves a frame's global statistics;
  lighting, focus and camera changes move every frame, and a recovery that gets worse moves the
  recovery error. It alerts at ``shift_alert`` spreads (default 1.0) *and* at least
  :data:`SHIFT_SIGMAS` standard errors of the two medians, so a small held-out set needs a larger
  shift. On Magnetic Tile (50 held-out images, ``benchmarks/drift_own_images.py``, 50 stream orders)
  the product's own good test images never alerted (largest shift 0.66, against a bound of 1.33 at 20
  frames), nor did its defective ones (0.90); 1.35× brighter and blurred frames alerted in every order.
* **Scores** (``ratio``): ``max(live p50 / calibration p50, live p95 / calibration p95)`` of the scores
  judged good (score ≤ threshold), reported (gauge, status) but not alerting: on heavy-tailed scores
  (Magnetic Tile's span 1e-4 … 0.35) and 50 held-out images, the ratio passed 1.5 on the product's own
  good images in a quarter of stream orders, and a rank test checked at every heartbeat still fired
  by chance in one stream of ten. A model calibrated before the image statistics existed has only
  the ratio, and alerts on it as it always did.

Reported on the heartbeat (``status``), the Prometheus endpoint (``ear_drift_shift``,
``ear_drift_ratio``, ``ear_drift_alert``) and in the log.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .settings import DEFAULT_DRIFT_ALERT as DEFAULT_ALERT
from .settings import DEFAULT_DRIFT_SHIFT as DEFAULT_SHIFT
from .settings import DEFAULT_DRIFT_WINDOW as DEFAULT_WINDOW

#: fewest good-side scores before a ratio is reported (a handful of images says nothing)
MIN_SCORES = 20
#: fewest frames before an input shift is reported (the alert also scales with both medians' standard error)
MIN_FRAMES = 20
#: a shift alerts only past this many standard errors of (live median − held-out median)
SHIFT_SIGMAS = 4.0
#: standard error of a median in units of the spread, per 1/sqrt(n) (1.2533 = sqrt(pi/2) for a normal)
_MEDIAN_SE = 1.2533


@dataclass
class _Inputs:
    """Held-out centre, spread and count of the image statistics (``calibration.ood``)."""

    center: np.ndarray
    spread: np.ndarray
    n: int
    names: tuple[str, ...]

    @classmethod
    def of(cls, calibration: dict[str, Any]) -> _Inputs | None:
        from ..inspect.ood import FEATURES, OODCheck

        check = OODCheck.from_calibration(calibration)
        n = int(calibration.get("n") or 0)
        return None if check is None or n < 2 else cls(check.center, check.spread, n, FEATURES)


@dataclass
class DriftMonitor:
    window: int = DEFAULT_WINDOW
    alert: float = DEFAULT_ALERT
    shift_alert: float = DEFAULT_SHIFT
    _scores: dict[str, deque] = field(default_factory=dict)
    _features: dict[str, deque] = field(default_factory=dict)
    _calibration: dict[str, tuple[float, float]] = field(default_factory=dict)
    _inputs: dict[str, _Inputs] = field(default_factory=dict)

    def observe(
        self,
        product: str,
        scores: np.ndarray,
        threshold: float,
        calibration: dict[str, Any],
        features: np.ndarray | None = None,
    ) -> None:
        """Add one batch: its finite good-side scores, and the [B, k] image statistics of its frames."""
        scores = np.asarray(scores, dtype=np.float64)
        good = scores[np.isfinite(scores) & (scores <= threshold)]
        self._scores.setdefault(product, deque(maxlen=self.window)).extend(good.tolist())
        if "p50" in calibration and "p95" in calibration:
            self._calibration[product] = (float(calibration["p50"]), float(calibration["p95"]))
        inputs = _Inputs.of(calibration)  # per batch (seven numbers): a reloaded model brings its own
        before = self._inputs.get(product)
        if inputs is None:
            self._inputs.pop(product, None)
        else:
            if before is not None and not np.array_equal(before.center, inputs.center):  # new weights: new window
                self._features.pop(product, None)  # (the recovery error, for one, is the old model's)
            self._inputs[product] = inputs
        if features is not None and product in self._inputs:
            rows = np.asarray(features, dtype=np.float64)
            rows = rows[np.isfinite(rows).all(axis=1)] if rows.ndim == 2 else rows[:0]
            self._features.setdefault(product, deque(maxlen=self.window)).extend(rows)

    def report(self, product: str) -> dict[str, Any]:
        """Live p50/p95, calibration p50/p95, the ratio, the input shift and whether the alert holds."""
        live = np.asarray(self._scores.get(product, ()), dtype=np.float64)
        out: dict[str, Any] = {"n": int(live.size), "alert_level": self.alert, "shift_level": self.shift_alert}
        if live.size:
            out.update(p50=float(np.quantile(live, 0.5)), p95=float(np.quantile(live, 0.95)))
        calib = self._calibration.get(product)
        if calib:
            out.update(calibration_p50=calib[0], calibration_p95=calib[1])
        alerts = []
        if live.size >= MIN_SCORES and calib and min(calib) > 0:
            out["ratio"] = max(out["p50"] / calib[0], out["p95"] / calib[1])
            if product not in self._inputs and out["ratio"] >= self.alert:  # an older model: the ratio alone
                alerts.append("scores")
        shift = self._shift(product)
        if shift is not None:
            out.update(shift)
            if shift["shift"] >= max(self.shift_alert, shift["shift_needed"]):
                alerts.append("inputs")
        if "ratio" in out or "shift" in out:
            out["alert"] = bool(alerts)
            out["alert_on"] = alerts
        return out

    def _shift(self, product: str) -> dict[str, Any] | None:
        """The image statistic whose live median is farthest from the held-out one, in spreads."""
        inputs, rows = self._inputs.get(product), self._features.get(product)
        if inputs is None or not rows or len(rows) < MIN_FRAMES:
            return None
        live = np.asarray(rows, dtype=np.float64)
        z = (np.median(live, axis=0) - inputs.center) / inputs.spread
        worst = int(np.argmax(np.abs(z)))
        standard_error = _MEDIAN_SE * float(np.sqrt(1 / inputs.n + 1 / len(live)))
        return {
            "frames": len(live),
            "shift": float(abs(z[worst])),
            "shift_signed": float(z[worst]),
            "shift_feature": inputs.names[worst],
            "shift_needed": SHIFT_SIGMAS * standard_error,
        }

    def products(self) -> list[str]:
        return sorted(set(self._scores) | set(self._features))


def describe_drift(report: dict[str, Any]) -> str:
    """One line for the log and ``status``: the input shift, the score ratio, or how far from reporting."""
    parts = []
    if "shift" in report:
        parts.append(
            f"inputs: {report['shift_feature']} {report['shift_signed']:+.2f} spreads from the held-out good images "
            f"(alert at {max(report['shift_level'], report['shift_needed']):.2f}, {report['frames']} frames)"
        )
    if "ratio" in report:
        parts.append(
            f"scores: {report['ratio']:.2f}x (good-side p50 {report['p50']:.4g} / calibrated "
            f"{report['calibration_p50']:.4g}, p95 {report['p95']:.4g} / {report['calibration_p95']:.4g}, "
            f"n={report['n']})"
        )
    return "; ".join(parts) or f"n={report.get('n', 0)} good-side scores so far (need {MIN_SCORES})"
