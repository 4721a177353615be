"""Where a scoring run's time goes: seconds per stage, from the process's start to the last write.

What a user waits for is the whole command (start-up, decoding, the networks, writing), not the U-Net
alone; ``ear-stream score --timings`` prints this table and ``benchmarks/score_stages.py`` compares it
across precisions and runtimes. A stage is timed either as a block (:meth:`StageTimer.stage`) or as the
time since the previous mark (:meth:`StageTimer.mark`); both move the same clock, so the stages add up to
the wall time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


def process_age() -> float | None:
    """Seconds since this process started (Linux: its start time in clock ticks since boot, against
    ``CLOCK_BOOTTIME``), or None where that cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class StageTimer:
    """Seconds per named stage, in the order stages first appear."""

    def __init__(self, start: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.time() if start is None else start

    @classmethod
    def started_at_process_start(cls) -> StageTimer:
        """A timer whose first mark includes the interpreter's start and the imports (torch's alone is a
        second or two): the process's age from ``/proc/self/stat``, where there is one, else now."""
        age = process_age()
        return cls(None if age is None else time.time() - age)

    def _add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def mark(self, stage: str) -> None:
        """Everything since the previous mark or stage belongs to ``stage``."""
        now = time.time()
        self._add(stage, now - self._last)
        self._last = now

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block as ``name``; what ran before it since the last mark goes to ``other``."""
        self.mark("other")
        try:
            yield
        finally:
            self.mark(name)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def table(self, images: int) -> str:
        """One line per stage: seconds, share of the total, milliseconds per image."""
        total = self.total or 1e-9
        lines = [f"{'stage':<16}{'seconds':>9}{'share':>8}{'ms/image':>10}"]
        for name, sec in self.seconds.items():
            if sec <= 0 and name == "other":
                continue
            per = 1e3 * sec / images if images else 0.0
            lines.append(f"{name:<16}{sec:>9.3f}{sec / total:>8.1%}{per:>10.2f}")
        lines.append(f"{'total':<16}{self.total:>9.3f}{'':>8}{1e3 * self.total / max(1, images):>10.2f}")
        return "\n".join(lines)


def maybe_stage(timer: StageTimer | None, name: str) -> contextlib.AbstractContextManager:
    """``timer.stage(name)``, or nothing when no one is timing."""
    return contextlib.nullcontext() if timer is None else timer.stage(name)
