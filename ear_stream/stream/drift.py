"""Drift: how far the live good-side score distribution has moved from the model's calibration.

Each worker keeps the last ``window`` scores per product that it judged good
(score ≤ threshold: defects are expected to score high, drift is the *normal*
images scoring differently), and compares their median and p95 with those of the
held-out good images the threshold was calibrated on (stored in the manifest).
``ratio = max(live p50 / calibration p50, live p95 / calibration p95)``: 1.0 is
no change; above ``alert`` (default 1.5) the line's images no longer look like
what the model was calibrated on (lighting, camera, product change). Reported on
the heartbeat (``status``), the Prometheus endpoint and in the log.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .settings import DEFAULT_DRIFT_ALERT as DEFAULT_ALERT
from .settings import DEFAULT_DRIFT_WINDOW as DEFAULT_WINDOW

#: fewest good-side scores before a ratio is reported (a handful of images says nothing)
MIN_SCORES = 20


@dataclass
class DriftMonitor:
    window: int = DEFAULT_WINDOW
    alert: float = DEFAULT_ALERT
    _scores: dict[str, deque] = field(default_factory=dict)
    _calibration: dict[str, tuple[float, float]] = field(default_factory=dict)

    def observe(self, product: str, scores: np.ndarray, threshold: float, calibration: dict[str, Any]) -> None:
        """Add one batch's finite scores; only those at or below the threshold count as good-side."""
        scores = np.asarray(scores, dtype=np.float64)
        good = scores[np.isfinite(scores) & (scores <= threshold)]
        self._scores.setdefault(product, deque(maxlen=self.window)).extend(good.tolist())
        if "p50" in calibration and "p95" in calibration:
            self._calibration[product] = (float(calibration["p50"]), float(calibration["p95"]))

    def report(self, product: str) -> dict[str, Any]:
        """Live p50/p95 of the window, calibration p50/p95, the ratio and whether it passes the alert level."""
        live = np.asarray(self._scores.get(product, ()), dtype=np.float64)
        out: dict[str, Any] = {"n": int(live.size), "alert_level": self.alert}
        if live.size:
            out.update(p50=float(np.quantile(live, 0.5)), p95=float(np.quantile(live, 0.95)))
        calib = self._calibration.get(product)
        if calib:
            out.update(calibration_p50=calib[0], calibration_p95=calib[1])
        if live.size >= MIN_SCORES and calib and min(calib) > 0:
            out["ratio"] = max(out["p50"] / calib[0], out["p95"] / calib[1])
            out["alert"] = bool(out["ratio"] >= self.alert)
        return out

    def products(self) -> list[str]:
        return sorted(self._scores)
