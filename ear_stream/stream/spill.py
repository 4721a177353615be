"""Dead letters a full Redis refused, kept on local disk until it has room (docs/design.md, "Redis full").

At maxmemory (noeviction) Redis refuses the dead-letter XADD. Kept pending, a batch of 3 MB junk entries
would hold Redis full for ever: nothing is freed, the worker never drains. So the worker writes the
letters here — one JSON file per batch, fsync'd and renamed into place — and only then acknowledges and
deletes the entries, which frees their memory. Once a second (and at start-up, so a SIGKILL loses
nothing) the files are posted to the dead-letter stream, each in one MULTI/EXEC, and deleted.

Several workers may share a folder: a file is posted by whoever holds its ``flock``. A crash between the
post and the unlink posts that file's letters again: dead letters are at-least-once, like scoring.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from .consumer import post_letters
from .status import redis_memory

log = logging.getLogger("ear_stream.stream.spill")

#: version of the file layout below: {"version", "dlq", "maxlen", "letters": [{field: base64 of the bytes}]}
FORMAT = 1
SUFFIX = ".json"
#: temporary files older than this are left by a crash mid-write (their entries were never acknowledged)
STALE_TMP_S = 600.0


def default_dir(out_dir: str | Path) -> Path:
    """Beside a local results folder (``OUT-dlq-spill``); for an object store, the user's state folder.

    Local disk, not the store: the spill must be written when everything remote may be failing.
    """
    text = str(out_dir)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return state / "ear-stream" / "dlq-spill"
    out = Path(text)
    return out.parent / f"{out.name}-dlq-spill"


def _as_bytes(value: Any) -> bytes:
    """A field value as Redis would store it (str encoded, numbers as their text)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeadLetterSpill:
    """One spill folder: :meth:`write` durably, :meth:`repost` what Redis takes again."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def files(self) -> list[Path]:
        """Spilled batches, oldest first (names start with the time they were written)."""
        try:
            return sorted(p for p in self.directory.iterdir() if p.suffix == SUFFIX)
        except FileNotFoundError:
            return []

    def write(self, dlq: str, maxlen: int, letters: list[dict[str, Any]]) -> Path:
        """Keep ``letters`` (fields as :func:`~.consumer.letter_fields` builds them) for ``dlq``, durably.

        Returns only once the file and its name are on disk (fsync of the file, then of the folder):
        the caller may then acknowledge and delete the entries. Raises :class:`OSError` (a full disk)
        before anything is in place.
        """
        self._ensure_directory()
        record = {
            "version": FORMAT,
            "dlq": dlq,
            "maxlen": maxlen,
            "letters": [{k: base64.b64encode(_as_bytes(v)).decode("ascii") for k, v in f.items()} for f in letters],
        }
        stem = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
        tmp, final = self.directory / f".{stem}.tmp", self.directory / f"{stem}{SUFFIX}"
        try:
            with open(tmp, "w", encoding="ascii") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        return final

    def _ensure_directory(self) -> None:
        if self.directory.is_dir():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.directory.parent)

    def repost(self, client: redis.Redis) -> int:
        """Post spilled batches to their dead-letter streams, oldest first; returns the letters posted.

        A batch is posted only when it fits below maxmemory (re-posted junk must not fill Redis and stop
        the producers) and stops at the first batch that does not, or that a full Redis refuses: the rest
        wait for the next call. A batch another worker is posting is skipped. Other Redis errors propagate
        (the caller retries later).
        """
        self.sweep_tmp()
        posted = 0
        for path in self.files():
            try:
                if not _has_room(client, path.stat().st_size):
                    return posted
                n = self._repost_file(client, path)
            except redis.OutOfMemoryError:
                return posted
            except FileNotFoundError:  # posted by another worker meanwhile
                continue
            posted += n
        return posted

    def _repost_file(self, client: redis.Redis, path: Path) -> int:
        """Post one file under its lock and delete it; 0 when someone else has it or it is gone."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 - held open for the lock until the file is deleted
        except FileNotFoundError:
            return 0
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            if not _same_file(path, fh):  # posted and deleted by another worker while we waited to open it
                return 0
            record = self._read(path, fh.read())
            if record is None:
                return 0
            letters = [{k: base64.b64decode(v) for k, v in f.items()} for f in record["letters"]]
            post_letters(client, record["dlq"], letters, int(record["maxlen"]))
            path.unlink()
            _fsync_dir(self.directory)
            log.info("posted %d spilled dead letters to %s", len(letters), record["dlq"])
            return len(letters)

    def _read(self, path: Path, data: bytes) -> dict[str, Any] | None:
        """The record of a spill file; a file that cannot be one is set aside (``.corrupt``), never deleted."""
        try:
            record = json.loads(data)
            if record.get("version") != FORMAT or not isinstance(record.get("letters"), list):
                raise ValueError(f"not a version {FORMAT} spill file")
            return record
        except (ValueError, AttributeError) as exc:
            aside = path.with_suffix(".corrupt")
            os.replace(path, aside)
            log.error("spilled dead letters in %s cannot be read (%s): moved to %s", path, exc, aside.name)
            return None

    def sweep_tmp(self, older_than_s: float = STALE_TMP_S) -> None:
        """Remove temporary files a crash left mid-write (their entries are still pending in Redis)."""
        try:
            stale = [p for p in self.directory.glob(".*.tmp") if time.time() - p.stat().st_mtime > older_than_s]
        except FileNotFoundError:
            return
        for path in stale:
            path.unlink(missing_ok=True)

    def count(self) -> int:
        """Letters waiting in the folder (reads every file: for start-up and tests, not the loop)."""
        total = 0
        for path in self.files():
            try:
                total += len(json.loads(path.read_bytes()).get("letters", []))
            except (OSError, ValueError, AttributeError):
                continue
        return total


def _has_room(client: redis.Redis, need: int) -> bool:
    """Whether Redis holds ``need`` more bytes below its maxmemory (True without a limit, or without +info)."""
    try:
        mem = redis_memory(client)
    except redis.ResponseError:
        return True
    return not mem["maxmemory"] or mem["used_memory"] + need < mem["maxmemory"]


def _same_file(path: Path, fh: Any) -> bool:
    """Whether ``path`` still names the open file (not deleted, not replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        return False
