"""Connecting to Redis: URL checks, the client, and set-up errors that say what to fix (never the password)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from ..errors import SetupError

#: the rights of the Redis user that workers, ``push``, ``status``, ``dlq`` and the review station share: the
#: one ACL the permission error recommends, docs/design.md shows and tests/stream/test_redis_honest.py grants.
#: ``~ear:*`` must cover the --stream, --dlq and --results-stream names (and their heartbeat keys);
#: +multi +exec: dead letters and replays are transactions; +eval: ack + delete without XACKDEL; +info
#: +config|get: the replica, eviction and persistence checks; +hset +expire +hgetall +pttl +scan: heartbeats;
#: +select: a database other than /0
ACL_RIGHTS = (
    "~ear:* -@all +@stream +ping +info +config|get +multi +exec +eval +hset +expire +hgetall +pttl +scan +select"
)
#: the whole command, with placeholders (a user is created with ``on >PASSWORD``; ``reset`` clears old rights)
ACL_SETUSER = f"ACL SETUSER <user> reset on ><password> {ACL_RIGHTS}"


class RedisSetupError(SetupError):
    """Redis cannot be used as configured (unreachable, wrong or missing password): retrying will not fix it."""


class TransactionRefused(RedisSetupError):
    """The server refused MULTI or a command of the transaction: nothing of it was applied."""


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
    if _cluster_enabled(client):
        client.close()
        client = _cluster_client(url, options)
    if verify:
        verify_connection(client, url)
    return client


def _cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server is a Redis Cluster node (INFO cluster); False when it cannot be asked now."""
    try:
        return int(client.info("cluster").get("cluster_enabled", 0)) == 1
    except (redis.RedisError, OSError, ValueError):
        return False  # unreachable or INFO refused: the plain client, whose first call says what is wrong


def _cluster_client(url: str, options: dict[str, Any]) -> redis.RedisCluster:
    """A RedisCluster client from any node's URL: the slot map is read from it, and read again on MOVED or a
    failover (its commands retry; :func:`atomic` asks again itself)."""
    try:
        return redis.RedisCluster.from_url(url, **options)
    except (redis.RedisError, ValueError) as exc:
        raise RedisSetupError(f"cannot use the Redis Cluster at {describe_url(url)}: {exc}") from None


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster)


def check_same_slot(client: Any, stream: str, dlq: str) -> None:
    """On a Redis Cluster, refuse an input stream and a dead-letter stream in different slots: a dead letter and
    its ack are one transaction, which a cluster runs in one slot only."""
    if not is_cluster(client):
        return
    from redis.crc import key_slot

    if key_slot(stream.encode()) != key_slot(dlq.encode()):
        raise RedisSetupError(
            f"on a Redis Cluster the input stream {stream!r} and the dead-letter stream {dlq!r} must share a slot: "
            "give --shards N (each shard's keys share a hash tag), or names with one tag, e.g. "
            "--stream 'ear:{line3}:in' --dlq 'ear:{line3}:dlq'"
        )


def node_clients(client: Any) -> list[redis.Redis]:
    """One plain client per primary of a Redis Cluster (the server's checks ask each), else ``[client]``."""
    if not is_cluster(client):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def slot_client(client: Any, key: str) -> redis.Redis:
    """The plain client of the primary that holds ``key`` (a cluster), or ``client`` itself."""
    if not is_cluster(client):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def verify_connection(client: redis.Redis, url: str) -> None:
    """Ping once and check the server takes writes: the set-up mistakes end here, in one line with the fix."""
    where = describe_url(url)
    try:
        client.ping()
    except redis.exceptions.NoPermissionError as exc:
        raise permission_error(exc, "run PING") from None
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
    check_primary(client, url)


def check_primary(client: redis.Redis, url: str) -> None:
    """Refuse a replica now: it answers reads, so the first XADD or XREADGROUP would fail far from the cause.

    A user without +info cannot be asked; the first write then says it (:func:`setup_errors`).
    """
    if is_cluster(client):  # the cluster client sends writes to primaries itself
        return
    try:
        info = client.info("replication")
    except redis.ResponseError:
        return
    if str(info.get("role", "master")) != "master":
        raise replica_error(url, info)


def replica_error(url: str, info: dict[str, Any] | None = None) -> RedisSetupError:
    """The one line for a read-only replica, naming its primary when INFO says where it is."""
    info = info or {}
    primary = f" (its primary: {info['master_host']}:{info['master_port']})" if info.get("master_host") else ""
    return RedisSetupError(
        f"Redis at {describe_url(url)} is a read-only replica; point at the primary{primary} with --redis / "
        "EAR_REDIS_URL"
    )


def permission_error(exc: redis.ResponseError, what: str) -> RedisSetupError:
    """An ACL refusal (NOPERM) as a set-up error that names the one ACL ear-stream is tested with."""
    return RedisSetupError(f"the Redis user may not {what} ({exc}): give it the tested rights, {ACL_SETUSER}")


@contextmanager
def setup_errors(url: str, what: str = "run a command this verb needs") -> Iterator[None]:
    """Turn the Redis refusals retrying cannot fix (an ACL without a right, a replica) into one line.

    Used around a verb's Redis calls: a user whose rights were cut, or a primary demoted to replica while
    the verb runs, ends as ``Error: …`` with the fix instead of a traceback.
    """
    try:
        yield
    except redis.exceptions.NoPermissionError as exc:
        raise permission_error(exc, what) from None
    except redis.exceptions.ReadOnlyError:
        raise replica_error(url) from None


def atomic(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Run raw ``commands`` in one MULTI/EXEC: all of them, or none (raises then).

    redis-py's transaction pipeline writes MULTI, the commands and EXEC in one go; when the server refuses
    MULTI itself (an ACL without +multi) each command then runs on its own, outside any transaction, and
    only EXEC fails: dead letters written twice, entries deleted without their letter. Here MULTI is sent
    alone and answered before anything else is sent. A command the server refuses to queue (OOM when
    Redis is full, NOPERM) makes it discard the whole transaction (EXECABORT); that first refusal is
    raised (:class:`redis.OutOfMemoryError` as itself: the caller keeps what it wanted to write).
    """
    if is_cluster(client):  # one slot (a shard's stream and dead letters share a hash tag): its primary's MULTI
        try:
            return atomic(slot_client(client, str(commands[0][1])), commands)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError) as exc:
            client.nodes_manager.initialize()  # a failover moved the slot: the next try asks the new primary
            raise redis.ConnectionError(f"the slot's primary changed or is gone ({exc}); nothing was applied") from exc
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("MULTI")
        try:
            conn.read_response()
        except redis.exceptions.NoPermissionError as exc:
            raise TransactionRefused(f"nothing was applied: {permission_error(exc, 'run MULTI')}") from None
        conn.send_packed_command(conn.pack_commands([*commands, ("EXEC",)]))
        refused = _queued_refusal(conn, len(commands))
        try:
            replies = conn.read_response()
        except redis.exceptions.ExecAbortError as exc:
            raise _refusal(refused or exc) from None
        failed = [r for r in replies if isinstance(r, redis.ResponseError)]
        if failed:  # ran, but one command failed at run time (a wrong type): Redis does not roll back
            raise failed[0]
        return list(replies)
    except BaseException:
        conn.disconnect()  # never hand back a connection that may still be inside MULTI
        raise
    finally:
        pool.release(conn)


def _queued_refusal(conn: Any, n: int) -> redis.ResponseError | None:
    """Read the ``+QUEUED`` replies of ``n`` commands; the first refusal among them, if any."""
    refused = None
    for _ in range(n):
        try:
            conn.read_response()
        except redis.ResponseError as exc:
            refused = refused or exc
    return refused


def _refusal(exc: redis.ResponseError) -> Exception:
    """What a discarded transaction raises: OOM as itself (callers keep their data), NOPERM as the ACL line."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return TransactionRefused(f"nothing was applied: {permission_error(exc, 'run a command of a transaction')}")
    return exc
