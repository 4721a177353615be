"""Expected failures become one line with the fix; anything else stays a traceback (a real bug).

Every verb runs inside :class:`ExpectedErrorsGroup`, so the mapping lives in one
place: the library raises :class:`~ear_stream.errors.EarStreamError` (or a
subclass) for mistakes in the input or set-up, and the user sees, e.g.,
``Error: Redis at 127.0.0.1:6379/0 refused the credentials …: put the right
password in the URL``, with exit status 1. Redis' own connection errors are
mapped too. Nothing heavy is imported here: ``ear-stream --help`` stays fast.
"""

from __future__ import annotations

import errno
import sys

import click

from ..errors import EarStreamError


def expected_error_message(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug."""
    if isinstance(exc, EarStreamError):
        return str(exc)
    redis = sys.modules.get("redis")  # only a verb that talked to Redis can raise its errors
    if redis is not None and isinstance(exc, redis.AuthenticationError):
        return (
            f"Redis refused the credentials ({exc}): put the right password in the URL (redis://:PASSWORD@host:port/0)"
        )
    if redis is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"cannot reach Redis ({exc}): start redis-server or correct --redis / EAR_REDIS_URL"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"a port this command needs is already in use ({exc}): choose another one (e.g. --metrics-port)"
    return None


class ExpectedErrorsGroup(click.Group):
    """A click group whose verbs' expected failures end as ``Error: <one line>`` and exit status 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            message = expected_error_message(exc)
            if message is None:
                raise
            raise click.ClickException(" ".join(message.split())) from exc
