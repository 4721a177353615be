"""Connecting to Redis: URL checks, the client, and set-up errors that say what to fix (never the password)."""

from __future__ import annotations

from typing import Any

import redis

from ..errors import SetupError


class RedisSetupError(SetupError):
    """Redis cannot be used as configured (unreachable, wrong or missing password): retrying will not fix it."""


def describe_url(url: str) -> str:
    """host:port/db of a Redis URL, never the password (for messages and logs)."""
    from urllib.parse import urlparse

    try:
        u = urlparse(url)
        return f"{u.scheme}://{u.hostname or 'localhost'}:{u.port or 6379}{u.path or '/0'}"
    except ValueError:
        return "the Redis URL"


_SPECIAL = "percent-encode / # ? @ in the password (%2F %23 %3F %40)"


def check_url(url: str) -> None:
    """Refuse a Redis URL that would be misread, before anything connects (messages never show the password).

    A password with ``/``, ``#`` or ``?`` unencoded moves part of it into the path, fragment or query,
    and the client would then connect somewhere else with a piece of the password as host or database.
    """
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        raise RedisSetupError(f"a Redis URL starts with redis://, rediss:// or unix://, not {u.scheme or 'nothing'}://")
    if u.fragment or "@" in u.path or "@" in u.query:
        raise RedisSetupError(f"the Redis URL cannot be read as host, port and database: {_SPECIAL}")
    if u.scheme != "unix" and u.path not in ("", "/") and not u.path[1:].isdigit():
        raise RedisSetupError(f"the Redis URL's database must be a number (/0); if the password has /, {_SPECIAL}")
    try:
        u.port  # noqa: B018 - raises for a port outside 0..65535
    except ValueError:
        raise RedisSetupError(f"the Redis URL's port is not a number in 1..65535 ({describe_url(url)})") from None


def connect(url: str, verify: bool = False, **kwargs: Any) -> redis.Redis:
    """A client from a ``redis://`` or ``rediss://`` URL (password and TLS options in the URL).

    ``verify`` pings once and turns the two set-up mistakes, an unreachable
    server and refused credentials, into :class:`RedisSetupError` with the fix.
    """
    check_url(url)
    options = {"socket_timeout": 30, "socket_connect_timeout": 5, "health_check_interval": 15, **kwargs}
    try:
        client = redis.Redis.from_url(url, **options)
    except ValueError as exc:  # redis-py's message may quote the URL: say what is wrong without it
        raise RedisSetupError(f"{describe_url(url)} is not a usable Redis URL ({type(exc).__name__})") from None
    if verify:
        verify_connection(client, url)
    return client


def verify_connection(client: redis.Redis, url: str) -> None:
    where = describe_url(url)
    try:
        client.ping()
    except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError) as exc:
        raise RedisSetupError(
            f"Redis at {where} refused the credentials ({exc}): put the right password in the URL "
            f"(redis://:PASSWORD@host:port/0) or in EAR_REDIS_URL"
        ) from exc
    except redis.ResponseError as exc:
        if "auth" not in str(exc).lower():
            raise
        raise RedisSetupError(f"Redis at {where} needs a password ({exc}): redis://:PASSWORD@host:port/0") from exc
    except ValueError as exc:
        raise RedisSetupError(f"{where} is not a usable Redis URL ({type(exc).__name__})") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisSetupError(
            f"cannot reach Redis at {where} ({exc}): start redis-server there or correct --redis / EAR_REDIS_URL"
        ) from exc


def permission_error(exc: redis.ResponseError, what: str) -> RedisSetupError:
    """An ACL refusal (NOPERM) as a set-up error that says which rights the worker's user needs."""
    return RedisSetupError(
        f"the Redis user may not {what} ({exc}): grant it the stream commands, e.g. "
        "ACL SETUSER <user> +@stream +@read +@write +eval +evalsha +info +config|get ~ear:*"
    )
