"""Input limits shared by decoding and the stream worker's settings (no heavy imports)."""

from __future__ import annotations

#: largest decoded image accepted (pixels); larger headers are refused before decoding
DEFAULT_MAX_PIXELS = 40_000_000

#: frame sanity (``ear_stream.io.decode.frame_issue``): a frame whose gray standard deviation is below this
#: (in [0, 1] units, ~2.5 grey levels of 255) is near-constant: a lens cap, a dark or saturated camera
FRAME_MIN_STD = 0.01
#: ... or whose long side is more than this many times its short side (a torn line-scan read)
FRAME_MAX_ASPECT = 20.0

#: the largest kept or labelled image file read back (the review station, ``refine``), checked before the
#: blob is read; a stream payload is at most 32 MiB, a file from another QA system may be larger
MAX_KEPT_IMAGE_BYTES = 256 * 1024 * 1024
