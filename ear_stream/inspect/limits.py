"""What bounds a training run beyond its epochs, and how it reports its progress on the way.

Owns :class:`RunLimits` (steps, a wall-clock or CPU-time budget, learning-curve cadence, the
progress bar): the knobs ``train_model`` passes through, and the one place a stop reason is named.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tqdm import tqdm

if TYPE_CHECKING:
    from .pipeline import Pipeline


@dataclass
class RunLimits:
    """What bounds a run beyond its epochs, and what it reports on the way (``train_model``'s knobs)."""

    max_steps: int | None = None
    max_minutes: float | None = None
    curve_every_minutes: float | None = None
    on_curve: Callable[[dict, Pipeline], dict | None] | None = None
    progress: bool = True
    #: "wall" (what an operator waits for) or "cpu" (this process's CPU seconds): a study that shares its cores
    #: with other work budgets CPU time, so every variant gets the same compute however busy the machine was.
    clock: Literal["wall", "cpu"] = "wall"

    def now(self) -> float:
        return time.process_time() if self.clock == "cpu" else time.time()

    @property
    def timed(self) -> bool:
        """Bounded by minutes rather than steps: the progress bar counts minutes."""
        return self.max_minutes is not None and self.max_steps is None

    def reached(self, step: int, total: int, elapsed: float) -> str | None:
        """Why the run stops before ``step`` (``max_steps``, ``epochs``, ``max_minutes``), or None."""
        if step >= total:
            return "max_steps" if self.max_steps is not None and step >= self.max_steps else "epochs"
        if self.max_minutes is not None and elapsed >= 60.0 * self.max_minutes:
            return "max_minutes"
        return None

    def progress_bar(self, total: int, step: int, elapsed: float, desc: str) -> tqdm:
        """Under a time budget the bar counts minutes, not the epoch bound's steps (an ETA of hours is a lie)."""
        timed = self.timed
        return tqdm(
            total=round(self.max_minutes, 1) if timed and self.max_minutes is not None else total,
            initial=round(elapsed / 60, 1) if timed else step,
            desc=desc,
            unit="min" if timed else "step",
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min {postfix}" if timed else None,
            disable=not self.progress,
        )

    def advance(self, bar: tqdm, elapsed: float) -> None:
        """One step done: the bar moves by a step, or to the minutes elapsed."""
        bar.update(round(elapsed / 60, 1) - bar.n if self.timed else 1)
