"""Which model of a product the line runs, and its candidate (docs/design.md, "Learning from the line").

Layout of a models folder (``MODELS``, what workers get as ``--models``)::

    MODELS/<product>                 the promoted model: a folder (as ``train`` writes it) or, once promoted,
                                     a link to one of the versions below
    MODELS/.versions/<product>/<v>/  every model promoted (and the folder it first replaced), by model version
    MODELS/.candidates/<product>/    the latest ``refine`` output: scored in the shadow (``--shadow``), never
                                     the verdict, until ``ear-stream promote``

Names starting with a dot are no product (product names never do, ``check_product``), so workers never serve
them. :func:`promote` copies the candidate into ``.versions`` (files fsynced) and swaps the product's link in
one ``rename``: a worker reading ``MODELS/<product>`` sees the old model or the new one, never a mix (it
resolves the link once per load, :class:`~ear_stream.stream.models.ModelRegistry`), and hot-reloads it as it
does a threshold revision. The first promotion turns a product folder into a link: the two are exchanged in
one ``renameat2(RENAME_EXCHANGE)`` and the folder then becomes a version (where a filesystem cannot exchange,
the folder moves first: for a moment there is no model, and a worker keeps scoring with the one in hand).
Version folders are named by the full model version; promotions of a product hold a lock, and every rename is
followed by an fsync of its folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # the artifact (torch, safetensors) loads when a promotion runs: the CLI's help stays light
    from .artifact import Manifest

CANDIDATES = ".candidates"
VERSIONS = ".versions"


def candidate_dir(models_dir: str | Path, product: str) -> Path:
    """Where ``refine`` writes a product's candidate by default and ``promote``/``--shadow`` look for it."""
    return Path(models_dir) / CANDIDATES / product


def product_of(model_dir: str | Path) -> tuple[Path, str]:
    """(models folder, product) of a promoted model's path ``MODELS/<product>``."""
    path = Path(model_dir).absolute()
    return path.parent, path.name


#: what a promotion copies besides weights and manifest: the run's report, never its checkpoint or state
PROMOTED_EXTRAS = ("curve.jsonl", "curve.png")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _locked(versions: Path) -> Iterator[None]:
    """One promotion of a product at a time (two would share staging names and race on the link)."""
    with open(versions / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def promote(
    models_dir: str | Path, product: str, candidate: str | Path, check: Callable[[Path], Manifest] | None = None
) -> tuple[Manifest, Path]:
    """Make ``candidate`` the model of ``product`` (see the module docstring); returns (its manifest, its version
    folder). The candidate is copied first and everything is decided on the copy — its weights verified against
    its manifest, then ``check(copy)`` (``promote``'s rules) — so a ``refine`` rewriting the candidate meanwhile
    cannot slip an unchecked model in. The candidate folder under ``.candidates`` is removed once it is promoted
    (the shadow stops scoring the model the verdicts now come from)."""
    from .artifact import MANIFEST_FILE, WEIGHTS_FILE, load_manifest, read_weights

    models_dir, candidate = Path(models_dir), Path(candidate)
    versions = models_dir / VERSIONS / product
    versions.mkdir(parents=True, exist_ok=True)
    _fsync(versions.parent)
    with _locked(versions):
        staging = versions / f".staging-{os.getpid()}-{time.time_ns()}"
        staging.mkdir()
        try:
            for name in (WEIGHTS_FILE, MANIFEST_FILE, *PROMOTED_EXTRAS):
                if (candidate / name).is_file():
                    shutil.copy2(candidate / name, staging / name)
            manifest = load_manifest(staging)
            read_weights(staging, manifest, verify=True)  # a corrupt candidate is refused before anything moves
            if check is not None:
                manifest = check(staging)
            for path in staging.iterdir():
                _fsync(path)
            _fsync(staging)
            target = versions / manifest.model_version
            if (target / MANIFEST_FILE).is_file() and (target / MANIFEST_FILE).read_bytes() != (
                staging / MANIFEST_FILE
            ).read_bytes():  # the same version with another manifest (edited in place by a revision): keep both
                target = versions / f"{manifest.model_version}-{time.time_ns()}"
            if (target / MANIFEST_FILE).is_file():
                shutil.rmtree(staging)
            else:
                os.replace(staging, target)
                _fsync(versions)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_link(models_dir, product, target, versions)
    if candidate.resolve() == candidate_dir(models_dir, product).resolve():
        shutil.rmtree(candidate, ignore_errors=True)
    return manifest, target


def _swap_link(models_dir: Path, product: str, target: Path, versions: Path) -> None:
    """Point ``MODELS/<product>`` at ``target`` in one rename; a product folder (never promoted) is exchanged
    with the link in one step and then kept as a version."""
    from .artifact import MANIFEST_FILE, load_manifest

    link = models_dir / product
    tmp = models_dir / f".{product}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, models_dir), tmp)
    if link.is_symlink() or not link.exists():
        os.replace(tmp, link)
    else:
        if not (link / MANIFEST_FILE).is_file():
            tmp.unlink()
            raise ConfigError(f"{link} is neither a model folder nor a promoted link: not replacing it")
        old = versions / load_manifest(link).model_version
        if _exchange(tmp, link):  # the link in place, the folder now at tmp: no moment without a model
            if old.exists():
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, old)
        else:  # no exchange on this filesystem: the folder moves first, a moment without a model
            if old.exists():
                shutil.rmtree(link)
            else:
                os.replace(link, old)
            os.replace(tmp, link)
        _fsync(versions)
    _fsync(models_dir)
