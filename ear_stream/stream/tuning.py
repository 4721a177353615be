"""Process-level helpers of a long-running worker: its age from ``/proc``, and glibc's malloc tuning.

Linux specifics, kept out of the loop: each one does nothing (or estimates) where the platform lacks it,
so the worker runs the same code everywhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_IMPORTED_AT = time.monotonic()


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc/self/stat), else since this module was imported.

    What ``startup_s`` reports: interpreter start, imports and model warm-up, not only the worker's own set-up.
    """
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


def return_large_frees_to_the_os(threshold: int = 8 << 20) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes and more with mmap, and hand them back on free.

    Decoding a 6000×6000 frame allocates ~150 MB in Pillow's 16 MB blocks; with glibc's dynamic mmap
    threshold those blocks come from per-thread heaps that keep the memory after the frame is gone, so
    a worker's RSS grew with every decode thread that ever held a giant frame. A fixed threshold
    returns it. Linux/glibc only; elsewhere nothing changes (returns False).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
