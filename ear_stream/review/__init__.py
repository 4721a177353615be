"""The review station (``ear-stream review``): people confirm or overrule verdicts, and their labels set thresholds.

A wing above ``inspect``/``io``/``stream`` and below ``cli``: it reads results and writes labels (``io``),
revises thresholds through the one atomic path (``inspect.thresholds``), and shows queue status (``stream``).
"""
