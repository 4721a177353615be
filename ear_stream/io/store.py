"""A content-addressed blob store (docs/design.md, "Blob store"): bytes in, a reference out.

What the line keeps so a person can see it and a model can learn from it (the original image of a
flagged item), and what a claim check carries instead of a payload, is stored here under the sha256
of its bytes: ``<root>/<aa>/<sha256><.ext>`` (``aa`` the first two hex digits, so no folder holds more
than 1/256 of the store; ``.ext`` from the image format Pillow recognises in the bytes, none for
anything else, so a person can open a kept image by its name). The key names the content, so:

* a put is idempotent: the same bytes give the same key and are not written again (a local blob's
  modification time is refreshed, so retention keeps what was kept again recently);
* a reader verifies what it gets against the key (and the size a :class:`StoredRef` records), so a
  bit flip or a foreign file under a blob's name is a :class:`BlobMismatch`, never silently served;
* a reference resolves by its key in whichever store it is read from: a store copied elsewhere
  (rsync, ``aws s3 sync``) still serves its references.

The root is a local folder or any pyarrow filesystem URI (``file:///…``, ``s3://bucket/prefix?
endpoint_override=host:port``, ``gs://…``). Writes are atomic through the helpers of
:mod:`.results`: locally a unique hidden temporary name, fsync, rename, folder fsync; on an object
store the whole object under a hidden temporary key, then moved. Retention (:meth:`BlobStore.prune`)
deletes oldest first by modification time, down to a byte budget and/or an age.

Every failure a caller may want to map (a dead-letter reason, a 404) is a :class:`StoreError` of one
kind: :class:`BlobNotFound`, :class:`BlobMismatch`, :class:`BlobTooLarge`, :class:`StoreUnavailable`,
:class:`BadReference`, :class:`BadLocation`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError, EarStreamError
from .results import is_uri, write_bytes_object_atomic, write_file_atomic

#: the file name ending of each image format recognised in a blob's bytes (the formats the line decodes,
#: and WebP, which the review station serves); any other content is stored without an ending
IMAGE_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
#: a blob's key relative to the root: ``<aa>/<sha256><.ext>``
KEY_RE = re.compile(r"(?P<aa>[0-9a-f]{2})/(?P<sha>[0-9a-f]{64})(?P<ext>\.[a-z0-9]{1,8})?")
#: a hidden temporary file or object (what :mod:`.results`' atomic writers use before the rename/move)
TEMP_RE = re.compile(r"\..+\.tmp")
#: a temporary left this long is what a killed writer abandoned (no write takes an hour): prune removes it
STALE_TEMP_S = 3600.0
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def parse_key(key: str) -> re.Match[str] | None:
    """The parts of a blob key (``aa``, ``sha``, ``ext``), or None when ``key`` is not one."""
    match = KEY_RE.fullmatch(key)
    return match if match is not None and match["aa"] == match["sha"][:2] else None


class StoreError(EarStreamError):
    """Base of every blob store failure: a caller maps each kind to its own outcome (dead-letter reason, 404)."""


class BadLocation(StoreError, ConfigError):
    """The store's location is not a folder or a pyarrow filesystem URI that can hold blobs."""


class BadReference(StoreError, ConfigError):
    """A reference that names no blob key (``<aa>/<sha256><.ext>``) or whose parts disagree."""


class BlobNotFound(StoreError, DataError):
    """No blob under the reference's key (never kept, pruned since, or another store)."""


class BlobMismatch(StoreError, ValueError):
    """The bytes read are not those the reference names (size or sha256): corrupt, truncated or replaced."""


class BlobTooLarge(StoreError, ValueError):
    """The blob is larger than the reader accepts (checked before its bytes are read)."""


class StoreUnavailable(StoreError, OSError):
    """The store cannot be read or written now: unreachable, refused, read-only or full."""


@dataclass(frozen=True)
class StoredRef:
    """Where a blob is (``uri``, the store's URI and the key), what it is (``sha256``) and its size."""

    uri: str
    sha256: str
    bytes: int

    @property
    def key(self) -> str:
        """``<aa>/<sha256><.ext>``: the last two parts of the URI, which any copy of the store resolves."""
        return "/".join(self.uri.rsplit("/", 2)[-2:])


@dataclass(frozen=True)
class Usage:
    """What the store holds (the gauge of bytes kept)."""

    bytes: int
    objects: int


@dataclass(frozen=True)
class Pruned:
    """What one :meth:`BlobStore.prune` freed, and what it left (``kept``: the gauge after it)."""

    freed_bytes: int
    removed: int
    kept: Usage


@dataclass(frozen=True)
class _Entry:
    key: str
    size: int
    mtime_ns: int


def image_extension(data: bytes | memoryview) -> str:
    """``.png``, ``.jpg``, … when Pillow recognises one of :data:`IMAGE_EXTENSIONS`' formats, else ``""``.

    Only the header is parsed (``Image.open`` is lazy), so this costs microseconds for any payload.
    """
    try:
        with Image.open(io.BytesIO(data), formats=tuple(IMAGE_EXTENSIONS)) as img:
            return IMAGE_EXTENSIONS.get(img.format or "", "")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return ""  # not an image Pillow knows (or a broken header): a blob like any other


def redacted(location: str) -> str:
    """``location`` without credentials or query parameters: what a message, a log or a reference may show."""
    scheme, sep, rest = location.partition("://")
    if not sep:
        return location
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    host, slash, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1]  # s3://KEY:SECRET@bucket/…: never shown
    return f"{scheme}://{host}{slash}{path.rstrip('/')}"


def _scrubbed(exc: BaseException, location: str) -> str:
    """``exc``'s message with ``location`` in it redacted."""
    return str(exc).replace(location, redacted(location))


class BlobStore:
    """Content-addressed blobs under one root: a local folder or a pyarrow filesystem URI.

    Safe to share between threads of one process (a worker's writer thread and its retention timer):
    puts need no lock (unique temporary names, an idempotent rename), and a prune deletes under a lock
    that a put of already-kept bytes also takes, so a blob kept again while a prune runs is not deleted.
    Across processes a prune can race a put of the same old bytes; the next read then says
    :class:`BlobNotFound` rather than anything wrong.
    """

    def __init__(self, location: str | Path) -> None:
        text = str(location).strip()
        if not text:
            raise BadLocation("a blob store needs a folder or a filesystem URI, got an empty location")
        self.local: Path | None = None
        self._fs: pafs.FileSystem
        self._base: str
        self.uri: str
        if is_uri(text):
            try:
                fs, base = pafs.FileSystem.from_uri(text)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise BadLocation(
                    f"cannot use {redacted(text)!r} as a blob store ({_scrubbed(exc, text)}): give a folder or a "
                    "pyarrow filesystem URI such as file:///data/keep or s3://bucket/prefix?endpoint_override=host:port"
                ) from None  # pyarrow's own message repeats the URI, credentials and all
            except OSError as exc:  # e.g. an S3 region lookup that cannot reach the service
                raise StoreUnavailable(
                    f"cannot reach the blob store {redacted(text)}: {_scrubbed(exc, text)}"
                ) from None
            if isinstance(fs, pafs.LocalFileSystem):  # file://: the local path, with fsync and rename
                self.local = Path(base)
            elif not base.strip("/"):
                raise BadLocation(f"a blob store URI names a bucket or folder, got {redacted(text)!r}")
            else:
                self._fs, self._base = fs, base.rstrip("/")
                self.uri = redacted(text)
        else:
            self.local = Path(text)
        if self.local is not None:
            self.local = self.local.absolute()
            if self.local.exists() and not self.local.is_dir():
                raise BadLocation(f"the blob store {self.local} is a file, not a folder")
            self._fs, self._base = pafs.LocalFileSystem(), str(self.local)
            self.uri = self.local.as_uri()
        self._lock = threading.Lock()
        #: object stores cannot restart an object's age: when this process kept a blob again (ns), for prune
        self._rekept: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"BlobStore({self.uri!r})"

    # ------------------------------------------------------------------ writing
    def put(self, data: bytes | bytearray | memoryview) -> StoredRef:
        """Keep ``data`` (atomically, once) and return its reference; the same bytes give the same reference."""
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        key = f"{sha[:2]}/{sha}{image_extension(data)}"
        ref = StoredRef(f"{self.uri}/{key}", sha, len(data))
        try:
            with self._lock:  # a prune running now must not delete what is being kept again
                if self._kept_again(key, len(data)):
                    return ref
            if self.local is not None:
                write_file_atomic(self.local / key, lambda f: f.write(data))
            else:
                write_bytes_object_atomic(self._fs, data, f"{self._base}/{sha[:2]}", key.split("/", 1)[1])
        except OSError as exc:  # a full disk, a read-only folder, a refused upload: nothing was left behind
            raise StoreUnavailable(f"cannot write {key} to {self.uri}: {exc}") from exc
        return ref

    def _kept_again(self, key: str, size: int) -> bool:
        """Whether the blob is already whole under ``key`` (then, locally, its age restarts)."""
        if self._size(key) != size:  # absent (or, against every write being atomic, not whole): write it
            return False
        if self.local is not None:
            try:
                os.utime(self.local / key)
            except FileNotFoundError:  # pruned by another process in between
                return False
        else:
            self._rekept[key] = time.time_ns()
        return True

    # ------------------------------------------------------------------ reading
    def get(self, ref: StoredRef | str, expected_sha256: str | None = None, max_bytes: int | None = None) -> bytes:
        """The blob's bytes, verified against its key's sha256 (and the size and ``expected_sha256`` given).

        ``ref`` is a :class:`StoredRef`, its URI, a key ``<aa>/<sha256><.ext>`` or a bare sha256. A blob
        larger than ``max_bytes`` is refused before it is read.
        """
        key, sha, size = self._resolve(ref)
        if expected_sha256 is not None and expected_sha256.lower() != sha:
            raise BlobMismatch(f"{key} holds sha256 {sha}, not the expected {expected_sha256}")
        path = f"{self._base}/{key}"
        found = self._size(key)
        if found is None:
            raise BlobNotFound(f"no blob {key} in {self.uri}")
        if max_bytes is not None and found > max_bytes:
            raise BlobTooLarge(f"{key} is {found} bytes, more than the {max_bytes} accepted")
        if size is not None and found != size:
            raise BlobMismatch(f"{key} is {found} bytes, its reference says {size}")
        try:
            with self._fs.open_input_stream(path) as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except FileNotFoundError as exc:  # pruned between the look and the read
            raise BlobNotFound(f"no blob {key} in {self.uri}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key} from {self.uri}: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise BlobTooLarge(f"{key} grew past the {max_bytes} bytes accepted while it was read")
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise BlobMismatch(f"{key} in {self.uri} reads as sha256 {actual}: the blob is corrupt")
        return bytes(data)

    def delete(self, ref: StoredRef | str) -> bool:
        """Delete the blob ``ref`` names (a claim check whose row is durable); False when it was not there."""
        key = self._resolve(ref)[0]
        with self._lock:
            self._rekept.pop(key, None)
            return self._delete(key)

    def exists(self, ref: StoredRef | str) -> bool:
        """Whether the blob is kept (its size is not checked: :meth:`get` verifies)."""
        return self._size(self._resolve(ref)[0]) is not None

    def _resolve(self, ref: StoredRef | str) -> tuple[str, str, int | None]:
        """(key, sha256, size or None) of a reference in any of the forms :meth:`get` takes."""
        if isinstance(ref, StoredRef):
            text, size = ref.key, ref.bytes
        else:
            text, size = str(ref).split("?", 1)[0].strip(), None
        if _SHA_RE.fullmatch(text.lower()):
            return self._find(text.lower()), text.lower(), size
        key = "/".join(text.rsplit("/", 2)[-2:])
        match = parse_key(key)
        if match is None:
            raise BadReference(f"{ref!r} names no blob: a reference ends in <aa>/<sha256>[.ext]")
        if isinstance(ref, StoredRef) and ref.sha256 != match["sha"]:
            raise BadReference(f"{ref!r}: its sha256 is not the one its URI names")
        return key, match["sha"], size

    def _find(self, sha: str) -> str:
        """The key of a bare sha256 (whatever its ending): one listing of its ``<aa>`` folder."""
        for entry in self._scan(f"{self._base}/{sha[:2]}")[0]:
            if entry.key.split("/", 1)[1].split(".", 1)[0] == sha:
                return entry.key
        return f"{sha[:2]}/{sha}"  # not kept: get says BlobNotFound for this key

    def _size(self, key: str) -> int | None:
        """The size of the blob under ``key``, None when there is none."""
        try:
            info = self._fs.get_file_info(f"{self._base}/{key}")
        except OSError as exc:
            raise StoreUnavailable(f"cannot look up {key} in {self.uri}: {exc}") from exc
        return info.size if info.type == pafs.FileType.File else None

    # ------------------------------------------------------------------ retention
    def usage(self) -> Usage:
        """Bytes and blobs kept (one listing of the store: call it at a gauge's pace, not per item)."""
        entries, _ = self._scan(self._base)
        return Usage(sum(e.size for e in entries), len(entries))

    def prune(self, max_bytes: int | None = None, max_age_s: float | None = None) -> Pruned:
        """Delete blobs oldest first (by modification time) until none is older than ``max_age_s`` and the
        rest fit in ``max_bytes``; temporaries a killed writer left over :data:`STALE_TEMP_S` ago go too.

        A blob kept again since the listing (its time moved) is left: it is new again.
        """
        if max_bytes is not None and max_bytes < 0:
            raise ConfigError(f"a byte budget is at least 0, got {max_bytes}")
        if max_age_s is not None and max_age_s < 0:
            raise ConfigError(f"a maximum age is at least 0 seconds, got {max_age_s}")
        entries, temps = self._scan(self._base)
        now_ns = time.time_ns()
        freed = removed = 0
        for temp in temps:
            if now_ns - temp.mtime_ns > STALE_TEMP_S * 1e9 and self._delete(temp.key):
                freed += temp.size
        with self._lock:
            # an object kept again by this process counts from then (local files had their time moved)
            age_of = {e.key: max(e.mtime_ns, self._rekept.get(e.key, 0)) for e in entries}
            self._rekept = {k: t for k, t in self._rekept.items() if k in age_of or t >= now_ns}  # gone: forgotten
        entries.sort(key=lambda e: (age_of[e.key], e.key))
        total = sum(e.size for e in entries)
        with self._lock:
            for entry in entries:
                too_old = max_age_s is not None and now_ns - age_of[entry.key] > max_age_s * 1e9
                over = max_bytes is not None and total > max_bytes
                if not (too_old or over):
                    break  # oldest first: everything after this one is newer and fits
                if self._rekept.get(entry.key, 0) >= now_ns:  # kept again since the listing: new again, stays
                    continue
                if self._unchanged(entry) and self._delete(entry.key):
                    freed, removed = freed + entry.size, removed + 1
                total -= entry.size
        kept = len(entries) - removed
        return Pruned(freed_bytes=freed, removed=removed, kept=Usage(total, kept))

    def _unchanged(self, entry: _Entry) -> bool:
        try:
            info = self._fs.get_file_info(f"{self._base}/{entry.key}")
        except OSError as exc:
            raise StoreUnavailable(f"cannot look up {entry.key} in {self.uri}: {exc}") from exc
        return info.type == pafs.FileType.File and info.mtime_ns == entry.mtime_ns

    def _delete(self, key: str) -> bool:
        """Delete one blob or temporary; False when it was gone already (another pruner)."""
        try:
            self._fs.delete_file(f"{self._base}/{key}")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreUnavailable(f"cannot delete {key} from {self.uri}: {exc}") from exc
        return True

    def _scan(self, folder: str) -> tuple[list[_Entry], list[_Entry]]:
        """(blobs, hidden temporaries) under ``folder``, keys relative to the root; anything else is ignored."""
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise StoreUnavailable(f"cannot list the blob store {self.uri}: {exc}") from exc
        blobs, temps = [], []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            key = info.path[len(self._base) :].lstrip("/")
            mtime_ns = info.mtime_ns if info.mtime_ns is not None else 0
            if parse_key(key):
                blobs.append(_Entry(key, info.size, mtime_ns))
            elif TEMP_RE.fullmatch(info.base_name):
                temps.append(_Entry(key, info.size, mtime_ns))
        return blobs, temps
