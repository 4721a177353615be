"""Input limits shared by decoding and the stream worker's settings (no heavy imports)."""

from __future__ import annotations

#: largest decoded image accepted (pixels); larger headers are refused before decoding
DEFAULT_MAX_PIXELS = 40_000_000
