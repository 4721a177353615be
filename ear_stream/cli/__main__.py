"""``python -m ear_stream.cli``: the same command as the ``ear-stream`` entry point."""

from . import main

main()
