"""Which model of a product the line runs, and its candidate (docs/design.md, "Learning from the line").

Layout of a models folder (``MODELS``, what workers get as ``--models``)::

    MODELS/<product>                 the promoted model: a folder (as ``train`` writes it) or, once promoted,
                                     a link to one of the versions below
    MODELS/.versions/<product>/<v>/  every model promoted (and the folder it replaced), by model version
    MODELS/.candidates/<product>/    the latest ``refine`` output: scored in the shadow (``--shadow``), never
                                     the verdict, until ``ear-stream promote``

Names starting with a dot are no product (product names never do, ``check_product``), so workers never serve
them. :func:`promote` copies the candidate into ``.versions`` (files fsynced) and swaps the product's link in
one ``rename``: a worker reading ``MODELS/<product>`` sees the old model or the new one, never a mix (it
resolves the link once per load, :class:`~ear_stream.stream.models.ModelRegistry`), and hot-reloads it as it
does a threshold revision. The first promotion turns a product folder into a link: its folder moves to
``.versions`` first, so for a moment there is no model (the worker keeps scoring with the one in hand).
"""

from __future__ import annotations

import os
import shutil
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


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def promote(models_dir: str | Path, product: str, candidate: str | Path) -> tuple[Manifest, Path]:
    """Make ``candidate`` the model of ``product`` atomically (see the module docstring); returns (its manifest,
    its version folder). The candidate's weights are verified against its manifest first."""
    from .artifact import MANIFEST_FILE, WEIGHTS_FILE, load_manifest, read_weights

    models_dir, candidate = Path(models_dir), Path(candidate)
    manifest = load_manifest(candidate)
    read_weights(candidate, manifest, verify=True)  # a corrupt candidate is refused before anything moves
    versions = models_dir / VERSIONS / product
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / manifest.model_version.split(".t", 1)[0]
    if not (target / MANIFEST_FILE).is_file():
        staging = versions / f".{target.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in (WEIGHTS_FILE, MANIFEST_FILE):  # manifest last: its presence marks a complete copy
            shutil.copy2(candidate / name, staging / name)
        for extra in candidate.iterdir():  # the report and learning curve travel with the model
            if extra.is_file() and extra.name not in (WEIGHTS_FILE, MANIFEST_FILE) and not extra.name.startswith("."):
                shutil.copy2(extra, staging / extra.name)
        _fsync_tree(staging)
        os.replace(staging, target)
    link = models_dir / product
    if link.exists() and not link.is_symlink():  # the first promotion: the trained folder becomes a version
        if not (link / MANIFEST_FILE).is_file():
            raise ConfigError(f"{link} is neither a model folder nor a promoted link: not replacing it")
        old = load_manifest(link).model_version.split(".t", 1)[0]
        keep = versions / old
        if keep.exists():
            shutil.rmtree(link)
        else:
            os.replace(link, keep)
    tmp = models_dir / f".{product}.link.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, models_dir), tmp)
    os.replace(tmp, link)  # one rename: the old model or the new one
    fd = os.open(models_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return manifest, target
