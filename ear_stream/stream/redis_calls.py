"""How a long-running process calls Redis: one policy, configured once per client and shared by the stream
worker, the Ray supervisor (``workers/supervisor.py``) and the :class:`~.producer.Producer`.

What a call that fails meets, in one place instead of at every call site:

* a lost connection, a timeout, a server still loading its data: retried under redis-py's
  :class:`~redis.retry.Retry` with exponential backoff (0.1 s doubling to 5 s), for as long as it takes or for
  a bounded number of tries (``retries``);
* a full Redis (``OOM command not allowed``: noeviction at maxmemory): waited out the same way and reported
  once per episode (:meth:`RedisCalls.note_full`), unless the caller can keep what it wanted to write elsewhere
  and asks for the error (``raise_oom``: dead letters are spilled, see :mod:`.dead_letters`);
* a consumer group deleted under the process (``NOGROUP``): recreated, and the call made once more;
* an ACL refusal (``NOPERM``): :class:`~.connection.RedisSetupError` naming the tested ACL, never retried;
* a refused password: never retried (it stays refused);
* a process that is stopping (``stopping()``) gives a server that is gone :data:`STOPPING_RETRIES` more tries.

A single command's own failures are not retried by the client itself: a call here may be a transaction
(:func:`~.connection.atomic`) or several commands, and is retried whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .connection import permission_error
from .consumer import ensure_group
from .protocol import StreamConfig

log = logging.getLogger("ear_stream.stream.worker.redis_calls")  # a child of the worker's logger, as before the split
T = TypeVar("T")
#: tries a stopping process still gives an unreachable Redis (waits of 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s)
STOPPING_RETRIES = 5
#: the backoff between tries: base · 2^failures, at most the cap (0.1 s, 0.2 s, … 5 s)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 5.0
#: what is retried whatever the caller asks: the server is unreachable, slow, or still loading
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    # Redis Cluster while a failover runs: no primary for a slot yet, or the slot moved under a request
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.SlotNotCoveredError,
)


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


class RedisCalls:
    """Runs Redis calls under the policy above; holds the "Redis is full" episode of its process.

    ``retries``: tries after the first, ``-1`` for ever (a worker or supervisor waits a restart of Redis out);
    ``stream``: the group to recreate on ``NOGROUP`` (None: the error is raised); ``stopping``: whether the
    process is leaving; ``on_retry`` is called for every failed try, ``on_full`` with True for every refusal of
    a full Redis and with False once it takes writes again (counters and gauges of the caller).
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: StreamConfig | None = None,
        *,
        retries: int = -1,
        stopping: Callable[[], bool] = _never,
        on_retry: Callable[[], None] = _nothing,
        on_full: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.stopping = stopping
        self.on_retry = on_retry
        self.on_full = on_full
        self._backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
        self._retries = retries
        #: True from the first refusal of a full Redis until :meth:`cleared`
        self.full = False

    def __call__(self, fn: Callable[[], T], what: str, raise_oom: bool = False) -> T:
        """``fn()`` under the policy; ``what`` names the call in logs and in the ACL message."""
        retried = TRANSIENT if raise_oom else (*TRANSIENT, redis.OutOfMemoryError)

        def attempt() -> T:
            try:
                return fn()
            except redis.exceptions.NoPermissionError as exc:
                raise permission_error(exc, what) from None
            except redis.ResponseError as exc:
                if self.stream is None or "NOGROUP" not in str(exc) or isinstance(exc, redis.OutOfMemoryError):
                    raise
                log.warning("consumer group missing during %s; recreating it", what)
                ensure_group(self.client, self.stream)
                return fn()

        def failed(exc: Exception, failures: int) -> None:
            if isinstance(exc, redis.OutOfMemoryError):
                self.note_full(what, exc)
            elif self.stopping() and failures > STOPPING_RETRIES:
                raise exc
            else:
                log.warning("redis unavailable during %s (%s); retrying", what, exc)
            self.on_retry()

        def retryable(exc: Exception) -> bool:
            return not isinstance(exc, redis.AuthenticationError)  # a refused password stays refused

        policy = Retry(self._backoff, retries=self._retries, supported_errors=retried)
        return policy.call_with_retry(attempt, failed, is_retryable=retryable, with_failure_count=True)

    def note_full(self, what: str, exc: Exception) -> None:
        """Redis is full (noeviction at maxmemory): say so once per episode, count it, expose it."""
        if not self.full:
            log.warning("redis is full during %s (%s): backing off; nothing is dropped", what, exc)
        self.full = True
        if self.on_full is not None:
            self.on_full(True)

    def cleared(self) -> None:
        """Redis takes writes again (what was kept while it was full has been posted)."""
        if self.full:
            log.info("redis accepts writes again")
        self.full = False
        if self.on_full is not None:
            self.on_full(False)
