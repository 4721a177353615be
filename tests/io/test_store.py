"""The blob store: content-addressed keys, atomic and idempotent puts, verified reads, retention, threads."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from PIL import Image

from ear_stream.errors import ConfigError, EarStreamError
from ear_stream.io.store import (
    STALE_TEMP_S,
    BadLocation,
    BadReference,
    BlobMismatch,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    StoredRef,
    StoreError,
    StoreUnavailable,
)


def png(seed: int = 0, size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("L", (size, size), seed % 256).save(out, format="PNG")
    return out.getvalue()


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="JPEG")
    return out.getvalue()


def temps(root: Path) -> list[Path]:
    return list(root.rglob(".*.tmp"))


@pytest.fixture(params=["folder", "file-uri"])
def local(request, tmp_path) -> tuple[BlobStore, Path]:
    root = tmp_path / "keep"
    return BlobStore(root if request.param == "folder" else root.as_uri()), root


def test_bytes_in_a_reference_out_laid_out_by_sha256(local):
    store, root = local
    data = png()
    ref = store.put(data)
    sha = hashlib.sha256(data).hexdigest()
    assert ref == StoredRef(f"{root.as_uri()}/{sha[:2]}/{sha}.png", sha, len(data))
    assert ref.key == f"{sha[:2]}/{sha}.png" and (root / ref.key).read_bytes() == data
    assert store.get(ref) == data  # every form of reference reads the same blob
    assert store.get(ref.uri) == store.get(ref.key) == store.get(sha) == store.get(sha.upper()) == data
    assert store.exists(ref) and not temps(root)


def test_the_ending_comes_from_the_bytes_not_from_a_name(tmp_path):
    store = BlobStore(tmp_path)
    assert store.put(jpeg()).key.endswith(".jpg")
    raw = store.put(b"\x89PNG but not an image")  # starts like a PNG, is none: no ending
    assert raw.key == f"{raw.sha256[:2]}/{raw.sha256}"
    assert store.get(raw) == b"\x89PNG but not an image"


def test_the_same_bytes_are_kept_once_and_their_age_restarts(tmp_path):
    store = BlobStore(tmp_path)
    first = store.put(png())
    path = tmp_path / first.key
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    inode, before = path.stat().st_ino, path.stat().st_mtime
    again = store.put(png())
    assert again == first
    assert path.stat().st_ino == inode  # not rewritten
    assert path.stat().st_mtime > before + 3600  # kept again: retention counts from now
    assert store.usage().objects == 1


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failed_write_leaves_neither_the_blob_nor_a_temporary(tmp_path, monkeypatch, step):
    store = BlobStore(tmp_path)

    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, step, full_disk)  # the data is in the temporary file; the step after fails
    with pytest.raises(StoreUnavailable, match="No space left") as caught:
        store.put(png())
    assert isinstance(caught.value, OSError)  # a caller's OSError handling (a full disk) still catches it
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    monkeypatch.undo()
    assert store.get(store.put(png())) == png()  # space is back: the next put works


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_store_error_and_leaves_nothing(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StoreUnavailable):
            BlobStore(tmp_path / "keep").put(png())
    finally:
        tmp_path.chmod(0o755)
    assert not temps(tmp_path)


def test_reads_are_verified_missing_corrupt_and_too_large_are_told_apart(tmp_path):
    store = BlobStore(tmp_path)
    ref = store.put(png(1))
    path = tmp_path / ref.key
    with pytest.raises(BlobTooLarge):
        store.get(ref, max_bytes=ref.bytes - 1)
    assert store.get(ref, max_bytes=ref.bytes) == png(1)
    with pytest.raises(BlobMismatch, match="expected"):
        store.get(ref, expected_sha256="0" * 64)
    flipped = bytearray(png(1))
    flipped[-5] ^= 0xFF
    path.write_bytes(bytes(flipped))  # same size, other bytes: only the hash can tell
    with pytest.raises(BlobMismatch, match="corrupt"):
        store.get(ref.uri)
    path.write_bytes(b"short")
    with pytest.raises(BlobMismatch, match="its reference says"):
        store.get(ref)
    path.unlink()
    with pytest.raises(BlobNotFound):
        store.get(ref)
    with pytest.raises(BlobNotFound):
        store.get("ab" * 32)
    assert not store.exists(ref)
    kinds = (BlobTooLarge, BlobMismatch, BlobNotFound, StoreUnavailable, BadReference, BadLocation)
    assert all(issubclass(kind, StoreError) and issubclass(kind, EarStreamError) for kind in kinds)
    assert len(set(kinds)) == 6


def test_references_that_name_no_blob_are_refused(tmp_path):
    store = BlobStore(tmp_path)
    ref = store.put(b"payload")
    for bad in ("not-a-key", f"zz/{ref.sha256}", f"{ref.sha256[:2]}/{ref.sha256[:60]}"):
        with pytest.raises(BadReference):
            store.get(bad)
    with pytest.raises(BadReference, match="its sha256"):
        store.get(StoredRef(ref.uri, "f" * 64, ref.bytes))


def test_bad_locations_say_what_a_location_is(tmp_path):
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(BadLocation, match="pyarrow filesystem URI") as caught:
        BlobStore("nope://user:secret@host/keep")
    assert "secret" not in str(caught.value)  # credentials never reach a message
    assert isinstance(caught.value, ConfigError)  # the CLI prints it in one line
    with pytest.raises(BadLocation, match="empty"):
        BlobStore("  ")
    with pytest.raises(BadLocation, match="not a folder"):
        BlobStore(tmp_path / "a-file")
    with pytest.raises(BadLocation, match="bucket or folder"):
        BlobStore("mock://")


def test_an_object_store_gets_whole_objects_and_the_same_api():
    """pyarrow's in-memory filesystem (mock://) stands for S3/GCS: the upload-then-move path."""
    store = BlobStore("mock:///bucket/keep?some_option=1")
    assert store.uri == "mock:///bucket/keep"  # query parameters are settings, not part of a reference
    refs = [store.put(png(i)) for i in range(3)]
    assert store.put(png(0)) == refs[0]
    assert refs[0].uri == f"mock:///bucket/keep/{refs[0].key}"
    assert [store.get(r) for r in refs] == [png(i) for i in range(3)]
    assert store.usage().objects == 3
    pruned = store.prune(max_bytes=0)
    assert pruned.removed == 3 and pruned.kept.objects == 0
    with pytest.raises(BlobNotFound):
        store.get(refs[0])


class FailingMoves:
    """A pyarrow filesystem whose moves fail (an upload refused at the last step); the rest is the real one."""

    def __init__(self, fs: object) -> None:
        self.fs = fs

    def move(self, src: str, dest: str) -> None:
        raise OSError(errno.EIO, "connection reset")

    def __getattr__(self, name: str) -> object:
        return getattr(self.fs, name)


def test_a_failed_upload_leaves_no_temporary_object():
    store = BlobStore("mock:///bucket/keep")
    real = store._fs
    store._fs = FailingMoves(real)  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable, match="connection reset"):
        store.put(png())
    infos = real.get_file_info(pafs.FileSelector("bucket", recursive=True, allow_not_found=True))
    assert not [i.path for i in infos if i.type == pafs.FileType.File]
    store._fs = real
    assert store.get(store.put(png())) == png()


def _aged(store: BlobStore, root: Path, n: int) -> list[StoredRef]:
    """n blobs of 100 bytes, the first the oldest (one hour apart)."""
    refs = []
    for i in range(n):
        ref = store.put(bytes([i]) * 100)
        when = time.time() - (n - i) * 3600
        os.utime(root / ref.key, (when, when))
        refs.append(ref)
    return refs


def test_prune_to_a_byte_budget_deletes_the_oldest_first(tmp_path):
    store = BlobStore(tmp_path)
    refs = _aged(store, tmp_path, 5)
    assert store.usage().bytes == 500 and store.usage().objects == 5
    pruned = store.prune(max_bytes=250)
    assert (pruned.freed_bytes, pruned.removed, pruned.kept.bytes, pruned.kept.objects) == (300, 3, 200, 2)
    assert [store.exists(r) for r in refs] == [False, False, False, True, True]
    assert store.usage() == pruned.kept
    assert store.prune(max_bytes=250).removed == 0  # within the budget: nothing more


def test_prune_by_age_and_abandoned_temporaries(tmp_path):
    store = BlobStore(tmp_path)
    refs = _aged(store, tmp_path, 4)  # 4 h, 3 h, 2 h and 1 h old
    stale, fresh = tmp_path / "ab" / ".x.1234.tmp", tmp_path / "ab" / ".y.5678.tmp"
    stale.parent.mkdir(exist_ok=True)
    for temp in (stale, fresh):
        temp.write_bytes(b"t" * 10)
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    assert store.usage().objects == 4  # temporaries are not blobs
    pruned = store.prune(max_age_s=2.5 * 3600)
    assert pruned.removed == 2 and pruned.freed_bytes == 200 + 10
    assert [store.exists(r) for r in refs] == [False, False, True, True]
    assert not stale.exists() and fresh.exists()  # a write may still be under way
    with pytest.raises(ConfigError):
        store.prune(max_bytes=-1)


def test_kept_again_is_young_again_for_prune(tmp_path):
    store = BlobStore(tmp_path)
    refs = _aged(store, tmp_path, 3)
    store.put(bytes([0]) * 100)  # the oldest, kept again now
    store.prune(max_age_s=1800)
    assert [store.exists(r) for r in refs] == [True, False, False]


def test_kept_again_is_young_again_on_an_object_store_too():
    """An object's time cannot be moved: the store remembers that it kept it again, and prune leaves it."""
    store = BlobStore("mock:///bucket/keep")
    old, other = store.put(png(1)), store.put(png(2))
    time.sleep(0.02)
    assert store.put(png(1)) == old  # kept again now
    pruned = store.prune(max_age_s=0.01)
    assert store.exists(old) and not store.exists(other) and pruned.removed == 1


def test_concurrent_puts_from_threads(tmp_path):
    """8 threads put the same 5 blobs at the same moments while another thread prunes: every put returns
    the blob's reference, each blob is whole, and no temporary is left."""
    store = BlobStore(tmp_path)
    payloads = [png(i, size=64) for i in range(5)]
    barrier = threading.Barrier(9)
    refs: list[StoredRef] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for data in payloads:
            try:
                ref = store.put(data)
            except StoreError as exc:  # collected, asserted below
                errors.append(exc)
                continue
            with lock:
                refs.append(ref)

    def pruner() -> None:
        barrier.wait()
        for _ in range(20):
            store.prune(max_bytes=10**9)  # a budget nothing exceeds: it must never delete

    threads = [threading.Thread(target=worker) for _ in range(8)] + [threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(refs) == 40 and len(set(refs)) == 5
    assert {store.get(r) for r in set(refs)} == set(payloads)
    assert store.usage().objects == 5 and not temps(tmp_path)
