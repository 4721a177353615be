"""Ray application of ear-stream: GPU-pinned inspection actors and their supervisor."""
