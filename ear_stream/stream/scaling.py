"""Pure scaling policy: how many inspection actors the stream's backlog calls for.

No Ray, no Redis: a function of (current actors, lag, pending, time), unit-tested
on its own. Scale-up is immediate when the backlog per actor passes the high
watermark; scale-down waits until the backlog has stayed at or below the low
watermark for the whole cool-down, so a flapping lag never makes actors oscillate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: seconds between two decisions of the supervisor (``ear-stream cluster --poll``): the policy's clock tick
DEFAULT_POLL_S = 2.0


@dataclass
class ScalingPolicy:
    """How many actors a backlog calls for; the field defaults are those ``ear-stream cluster`` shows for
    ``--min-workers``, ``--max-workers``, ``--high-watermark`` and ``--cooldown`` (one definition)."""

    min_workers: int = 1
    max_workers: int = 4
    #: backlog per actor above which more actors are wanted
    high_watermark: int = 256
    #: backlog at or below which actors may be released after the cool-down
    low_watermark: int = 0
    scale_down_cooldown_s: float = 60.0
    scale_up_cooldown_s: float = 5.0
    _quiet_since: float | None = field(default=None, init=False, repr=False)
    _last_up: float = field(default=-math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 0 <= min_workers <= max_workers, got {self.min_workers}, {self.max_workers}")

    def desired(self, current: int, lag: int, pending: int, now: float) -> int:
        """Actors wanted now; ``lag`` = not yet delivered, ``pending`` = delivered, not acknowledged."""
        backlog = max(0, lag) + max(0, pending)
        current = max(current, 0)
        floor = max(self.min_workers, min(current, self.max_workers))
        if backlog > self.high_watermark * max(current, 1):
            self._quiet_since = None
            if now - self._last_up < self.scale_up_cooldown_s:
                return floor
            want = min(self.max_workers, max(current + 1, math.ceil(backlog / self.high_watermark)))
            if want > current:
                self._last_up = now
            return max(self.min_workers, want)
        if backlog <= self.low_watermark:
            if self._quiet_since is None:
                self._quiet_since = now
            if now - self._quiet_since >= self.scale_down_cooldown_s:
                return self.min_workers
            return floor
        self._quiet_since = None  # some backlog, not enough to grow: hold
        return floor
