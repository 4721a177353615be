"""Claim-check payloads on the worker (docs/design.md, "Claim-check entries"): fetch, verify, release.

A claim-check entry names its image (``uri``, ``sha256``, ``bytes``) instead of carrying it, so a 4 MB
line-scan frame costs Redis a few hundred bytes. On the worker's prefetch thread, while the device scores
the previous batch, the objects of a batch are fetched concurrently (``fetch_threads``) from the worker's
payload store (``--store``), each resolved by its key (the URI's last two parts: a copied store serves
the same references) and checked by :class:`~ear_stream.io.store.BlobStore` against its size and sha256.
What the store answers decides the entry's fate, each with its own dead-letter reason:

* whole: the entry is scored as if its bytes had been inline;
* not there → ``payload_missing``; other bytes (size or hash) → ``payload_mismatch``; bigger than
  ``max_image_bytes`` → ``too_large``; a URI that names no key → ``payload_invalid`` (the letter keeps
  the reference, so ``dlq replay`` works once the object is back);
* unreachable, refused, timing out (:class:`~ear_stream.io.store.StoreUnavailable`): not the entry's
  fault, never a dead letter. The entry waits here, held and kept claimed by the worker, which reads
  nothing new meanwhile, and is fetched again with backoff (0.5 s doubling to 10 s).

Once an entry's row is durable and acknowledged its object is deleted (``payload_after="delete"``: the
claim is consumed) or left (``"keep"``: for review and refine, aged out by the store's own retention), on a
background thread: a failed delete leaves an orphan object, never a lost row. An object whose bytes the
image keeper kept, or that another entry this worker holds names (counted from fetch to ack), is not
deleted; entries held by other workers (or other shards' loops) are not known here: identical bytes sent
twice may find their object gone (``payload_missing``), so lines that resend frames use ``keep``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..io.store import (
    BadReference,
    BlobMismatch,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    StoredRef,
    StoreUnavailable,
    redacted,
)
from . import protocol as p
from .settings import PAYLOAD_AFTER

log = logging.getLogger("ear_stream.stream.payloads")
#: deletes of consumed objects at once (an object store answers each in tens of ms: one thread would fall behind)
DELETE_THREADS = 4
#: a fetch the store could not serve is tried again after 0.5 s, doubling to at most 10 s
FETCH_RETRY_S, FETCH_RETRY_CAP_S = 0.5, 10.0


class PayloadFetcher:
    """Fetches the objects of claim-check entries and releases them once their rows are durable.

    ``on_failing(bool)`` is told when fetching starts and stops failing (the worker's gauge); ``stats`` is the
    worker's counter dict (``payloads_fetched``, ``payload_fetch_retries``, ``payloads_deleted``,
    ``payload_delete_failures``).
    """

    def __init__(
        self,
        location: str,
        max_image_bytes: int,
        threads: int = 8,
        after: str = "delete",
        stats: dict[str, Any] | None = None,
        on_failing: Callable[[bool], None] | None = None,
    ) -> None:
        if after not in PAYLOAD_AFTER:
            raise ValueError(f"payload_after must be one of {PAYLOAD_AFTER}, got {after!r}")
        self.store = BlobStore(location)
        self.max_image_bytes = max_image_bytes
        self.after = after
        self.stats = stats if stats is not None else {}
        for key in ("payloads_fetched", "payload_fetch_retries", "payloads_deleted", "payload_delete_failures"):
            self.stats.setdefault(key, 0)
        self._on_failing = on_failing or (lambda failing: None)
        #: entries whose store could not be reached: held, fetched again at ``retry_at``
        self.waiting: list[p.ValidEntry] = []
        self.failures = 0
        self.retry_at = 0.0
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="ear-fetch")
        self._deletes = ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="ear-payload-delete")
        #: sha256 of every claim check this worker holds, from its first fetch until its row is acknowledged
        #: (an object another held entry names is not deleted); under a lock: fetch and release run on two threads
        self._in_hand: Counter[str] = Counter()
        self._in_hand_lock = threading.Lock()

    # ------------------------------------------------------------------ fetching
    def due(self) -> bool:
        """Entries wait for the store and their backoff has passed."""
        return bool(self.waiting) and time.monotonic() >= self.retry_at

    def retry_in(self) -> float:
        """Seconds until the waiting entries are tried again (0 when nothing waits)."""
        return max(0.0, self.retry_at - time.monotonic()) if self.waiting else 0.0

    def fetch(self, entries: list[p.ValidEntry]) -> tuple[list[p.ValidEntry], list[p.Rejection]]:
        """``entries`` with every payload in hand (the waiting ones first, when due), and the dead letters.

        Inline entries pass untouched; a claim check fetched whole gets its bytes in ``image``; one whose
        store cannot be reached joins :attr:`waiting` (also untried while an earlier outage backs off).
        """
        claims = [ve for ve in entries if ve.ref is not None]
        ready = [ve for ve in entries if ve.ref is None]
        with self._in_hand_lock:
            self._in_hand.update(ve.ref.sha256 for ve in claims if ve.ref is not None)
        if self.waiting and not self.due():
            self.waiting += claims
            return ready, []
        todo, self.waiting = self.waiting + claims, []
        rejections: list[p.Rejection] = []
        last_error: StoreUnavailable | None = None
        for ve, got in zip(todo, self._pool.map(self._get, todo), strict=True):
            if isinstance(got, bytes):
                ve.image = got
                ready.append(ve)
            elif isinstance(got, p.Rejection):
                rejections.append(got)
                self._let_go([ve.ref.sha256] if ve.ref is not None else [])
            else:
                self.waiting.append(ve)
                last_error = got
        self.stats["payloads_fetched"] += len(todo) - len(self.waiting) - len(rejections)
        if last_error is not None:
            self._unreachable(last_error)
        elif self.failures:
            log.info("the payload store %s answers again after %d failed tries", self.store.uri, self.failures)
            self.failures = 0
            self._on_failing(False)
        return ready, rejections

    def _get(self, ve: p.ValidEntry) -> bytes | p.Rejection | StoreUnavailable:
        """One object's bytes, the entry's dead letter, or the store's unavailability (to wait on)."""
        ref = ve.ref
        assert ref is not None
        shown = redacted(ref.uri)
        try:
            return self.store.get(StoredRef(ref.uri, ref.sha256, ref.bytes), max_bytes=self.max_image_bytes)
        except StoreUnavailable as exc:
            return exc
        except BlobNotFound as exc:
            return p.Rejection(ve.entry, p.PAYLOAD_MISSING, f"{shown}: {exc}")
        except BlobMismatch as exc:
            return p.Rejection(ve.entry, p.PAYLOAD_MISMATCH, f"{shown}: {exc}")
        except BlobTooLarge as exc:
            return p.Rejection(ve.entry, p.TOO_LARGE, f"{shown}: {exc}")
        except BadReference as exc:
            return p.Rejection(ve.entry, p.PAYLOAD_INVALID, f"{shown}: {exc}")
        except OSError as exc:  # any other I/O failure of the store's client is the store's, not the entry's
            return StoreUnavailable(f"cannot read {shown}: {exc}")
        except Exception as exc:  # noqa: BLE001 - whatever else a filesystem client raises: this entry's letter
            return p.Rejection(ve.entry, p.PAYLOAD_INVALID, f"cannot fetch {shown}: {type(exc).__name__}: {exc}"[:500])

    def _unreachable(self, exc: Exception) -> None:
        """Back off: say so once per outage; the entries wait (the worker keeps them claimed)."""
        if not self.failures:
            log.error(
                "cannot fetch payloads (%s): %d entries wait, pending; retrying with backoff", exc, len(self.waiting)
            )
            self._on_failing(True)
        self.failures += 1
        self.stats["payload_fetch_retries"] += 1
        delay = min(FETCH_RETRY_CAP_S, FETCH_RETRY_S * 2 ** min(self.failures - 1, 16))
        self.retry_at = time.monotonic() + delay

    # ------------------------------------------------------------------ releasing
    def release(self, rows: list[dict[str, Any]]) -> None:
        """After the rows are durable and acknowledged: delete their objects (``payload_after="delete"``)."""
        claimed = [row for row in rows if row.get("payload_uri")]
        free = self._let_go([_sha_of(row["payload_uri"]) for row in claimed])
        if self.after != "delete":
            return
        for uri in sorted({row["payload_uri"] for row in claimed if _sha_of(row["payload_uri"]) in free}):
            kept = {_sha_of(row["image_uri"]) for row in claimed if row.get("image_uri")}
            if _sha_of(uri) not in kept:  # the keeper kept these bytes (whatever store it names): leave them
                self._deletes.submit(self._delete, uri)

    def _let_go(self, shas: list[str]) -> set[str]:
        """Count these claims as no longer held; the shas no held entry names any more (free to delete)."""
        with self._in_hand_lock:
            for sha in shas:
                self._in_hand[sha] -= 1
                if self._in_hand[sha] <= 0:
                    del self._in_hand[sha]
            return {sha for sha in shas if sha not in self._in_hand}

    def _delete(self, uri: str) -> None:
        try:
            self.store.delete(uri)
            self.stats["payloads_deleted"] += 1
        except Exception as exc:  # noqa: BLE001 - an orphan object, aged out by the store's retention
            self.stats["payload_delete_failures"] += 1
            log.warning("could not delete the payload %s (%s): it stays in the store", redacted(uri), exc)

    def close(self) -> None:
        """Stop the threads; deletes not yet started are dropped (their objects are orphans the store's retention
        ages out: never a lost row), so a slow or unreachable store cannot hold a stopping worker."""
        self._pool.shutdown(wait=True)
        self._deletes.shutdown(wait=True, cancel_futures=True)


def _sha_of(uri: str) -> str:
    """The sha256 a claim check's URI ends in (its key's name without the ending)."""
    return uri.split("?", 1)[0].rsplit("/", 1)[-1].split(".", 1)[0].lower()
