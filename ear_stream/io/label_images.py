"""Where the image of a labelled item is (docs/design.md, "Learning from the line"): ``refine --images``.

Two ways a label's ``id`` leads to its image bytes:

- **a folder of files** (a local folder or any pyarrow filesystem URI): the id is the file's path relative to
  it (``crack/017.png``), as ``ear-stream labels import`` checks it;
- **the line's kept images** (``--results DIR`` beside ``--images STORE``): the id is the item's id in the
  results, whose ``image_uri`` names the blob the worker kept (``--keep-images``); the blob is read from
  ``--images`` (a copy of the store) or, without it, from the store the URI names, verified by its sha256.

A label whose image cannot be had is not an error of the run: it is reported (:attr:`LabelImages.missing`
collects one reason per id) and left out, so a pruned image costs one label, never the refinement.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from ..errors import ConfigError
from .limits import MAX_KEPT_IMAGE_BYTES
from .results import is_uri, read_results
from .store import BlobStore, StoreError


class LabelImages:
    """The image bytes of labelled items of one product, by id (see the module docstring for the two ways)."""

    def __init__(self, images: str | Path | None, results: str | Path | None = None, product: str = "") -> None:
        if images is None and results is None:
            raise ConfigError("give --images DIR|URI (files named by the labels' ids) or --results DIR (kept images)")
        self.images, self.product = None if images is None else str(images), product
        #: id → why its image could not be read (the label is left out of the run)
        self.missing: dict[str, str] = {}
        self._uris: dict[str, str] | None = None
        self._store: BlobStore | None = None
        if results is not None:
            table = read_results(results)
            if product and "product" in table.column_names:
                rows = [r for r in table.select(["product", "id", "image_uri"]).to_pylist() if r["product"] == product]
            else:
                rows = table.select(["id", "image_uri"]).to_pylist() if "image_uri" in table.column_names else []
            self._uris = {str(r["id"]): r["image_uri"] for r in rows if r.get("image_uri")}
            self._store = None if images is None else BlobStore(str(images))

    def read(self, ident: str) -> bytes | None:
        """The bytes of the image labelled ``ident``, or None (the reason kept in :attr:`missing`)."""
        try:
            return self._kept(ident) if self._uris is not None else self._file(ident)
        except (StoreError, OSError, ConfigError) as exc:
            self.missing[ident] = str(exc)
            return None

    def _kept(self, ident: str) -> bytes | None:
        assert self._uris is not None
        uri = self._uris.get(ident)
        if uri is None:
            self.missing[ident] = "no kept image in the results (not flagged nor sampled, or kept before --keep-images)"
            return None
        store = self._store or BlobStore(uri.rsplit("/", 2)[0])
        return store.get(uri, max_bytes=MAX_KEPT_IMAGE_BYTES)

    def _file(self, ident: str) -> bytes:
        assert self.images is not None
        parts = Path(ident).parts
        if not parts or Path(ident).is_absolute() or ".." in parts:
            raise ConfigError(f"id {ident!r} is not a path inside --images")
        if is_uri(self.images):
            fs, base = pafs.FileSystem.from_uri(self.images)
            path = f"{base.rstrip('/')}/{Path(ident).as_posix()}"
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                raise ConfigError(f"no image {ident!r} under {self.images}")
            if info.size is not None and info.size > MAX_KEPT_IMAGE_BYTES:
                raise ConfigError(f"{ident!r} is {info.size} bytes, more than the {MAX_KEPT_IMAGE_BYTES} accepted")
            with fs.open_input_stream(path) as f:
                return bytes(f.read())
        root = Path(self.images).resolve()
        path = (root / ident).resolve()
        if not path.is_relative_to(root):
            raise ConfigError(f"id {ident!r} points outside --images")
        if not path.is_file():
            raise ConfigError(f"no image {ident!r} under {self.images}")
        if path.stat().st_size > MAX_KEPT_IMAGE_BYTES:
            raise ConfigError(
                f"{ident!r} is {path.stat().st_size} bytes, more than the {MAX_KEPT_IMAGE_BYTES} accepted"
            )
        return path.read_bytes()
