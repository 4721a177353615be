"""The package's expected failures: one base, a few kinds, and the reasons a stream entry can fail.

Anything raised as an :class:`EarStreamError` is a mistake in the input or the set-up
(a bad option, a missing file, a corrupt model): the CLI prints its message in one
line with exit status 1. Anything else is a bug and stays a traceback. Each kind
also derives from the matching builtin (``ValueError``, ``FileNotFoundError``,
``RuntimeError``) so callers that catch those keep working.

This module imports nothing heavy: the CLI's error handling loads it for ``--help``.
"""

from __future__ import annotations

from enum import Enum


class EarStreamError(Exception):
    """Base of every expected failure."""


class ConfigError(EarStreamError, ValueError):
    """An option, config value or policy that cannot work."""


class DataError(EarStreamError, FileNotFoundError):
    """Input data that is missing or not in the expected layout."""


class SetupError(EarStreamError, RuntimeError):
    """The machine or a service cannot be used as configured (no device, no redis-server, Redis refused)."""


class Reason(str, Enum):
    """Why an entry or image could not be scored: the ``reason`` field of a dead letter, the reason column of
    ``score``'s failures. docs/design.md lists when each is given."""

    DECODE_ERROR = "decode_error"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNKNOWN_PRODUCT = "unknown_product"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    INVALID_FIELD = "invalid_field"
    MAX_DELIVERIES = "max_deliveries"
    MODEL_ERROR = "model_error"
    NON_FINITE_SCORE = "non_finite_score"
    #: a claim-check entry (``uri``/``sha256``/``bytes``, docs/design.md "Claim-check entries") whose object is
    #: not in the worker's payload store (never put, deleted, pruned, another store)
    PAYLOAD_MISSING = "payload_missing"
    #: the object's size or sha256 is not the one the reference names (corrupt, truncated, replaced)
    PAYLOAD_MISMATCH = "payload_mismatch"
    #: a reference the worker cannot resolve: no key in its ``uri``, or no ``--store`` to resolve it in
    PAYLOAD_INVALID = "payload_invalid"
    #: not a dead letter: a frame that decoded but cannot be a photo of a part (blank, uniform, a sliver);
    #: scored, written with this reason in ``frame_check`` and never passed as ``ok``
    INVALID_FRAME = "invalid_frame"

    def __str__(self) -> str:
        return self.value
