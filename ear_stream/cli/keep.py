"""``--keep-images`` and its retention options, one definition for ``worker``, ``cluster`` and ``score``
(docs/design.md, "Keeping images"), and the check of a store location they share with ``--store``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _byte_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """`--keep-bytes` as bytes: a budget is typed as people say it (10G), refused in one line when it is not one."""
    if value is None:
        return None
    from ..errors import ConfigError
    from ..io.keeping import parse_bytes

    try:
        return parse_bytes(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def keep_options(fn: F) -> F:
    """``--keep-images``, ``--keep-passed``, ``--keep-bytes``, ``--keep-days``: one definition for ``worker``,
    ``cluster`` and ``score`` (defaults: those of :class:`~ear_stream.stream.settings.WorkerConfig`'s fields)."""
    from ..stream.settings import DEFAULT_KEEP_PASSED  # the others default to None: nothing kept, no bound

    fn = click.option(
        "--keep-days",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Delete kept images older than this many days (checked at most once a minute).",
    )(fn)
    fn = click.option(
        "--keep-bytes",
        default=None,
        callback=_byte_size,
        help="Bound the kept images to this size, oldest deleted first (checked at most once a minute): bytes, or "
        "with K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB, e.g. 10G.",
    )(fn)
    fn = click.option(
        "--keep-passed",
        type=click.FloatRange(0.0, 1.0),
        default=DEFAULT_KEEP_PASSED,
        show_default=True,
        help="Share of passed items whose image is kept too: the review sample, a stable draw by the item's id "
        "(the one the review station queues passed items by); 0 keeps flagged items only.",
    )(fn)
    fn = click.option(
        "--keep-images",
        default=None,
        help="Keep the original image of every flagged item and of the --keep-passed sample here (a folder or a "
        "pyarrow filesystem URI such as s3://bucket/prefix), under its sha256; the row's image_uri says where. "
        "A store that fails leaves image_uri empty; scoring goes on.",
    )(fn)
    return fn


def keep_config(
    keep_images: str | None, keep_passed: float, keep_bytes: int | None, keep_days: float | None
) -> dict[str, Any]:
    """The checked keep options as :class:`~ear_stream.stream.settings.WorkerConfig` fields.

    A local folder becomes absolute (an actor or a restarted worker may run elsewhere); a location that can
    never hold images (a file, a URI pyarrow cannot open) is refused now, in one line; a store that cannot
    be reached now is only warned about (the worker keeps trying, and scores meanwhile).
    """
    if keep_images is None:
        if keep_bytes is not None or keep_days is not None:
            raise click.UsageError("--keep-bytes and --keep-days bound what --keep-images keeps: give --keep-images")
        return {}
    location = checked_store(keep_images, "--keep-images", "images are kept once it can be reached")
    return {"keep_images": location, "keep_passed": keep_passed, "keep_bytes": keep_bytes, "keep_days": keep_days}


def checked_store(location: str, option: str, meanwhile: str) -> str:
    """``location`` as a worker keeps it: a local folder made absolute (an actor or a restarted worker may run
    elsewhere); one that can never be a store (a file, a URI pyarrow cannot open) refused in one line; one
    that cannot be reached now only warned about (``meanwhile``: what the worker does until it can)."""
    from ..io.keeping import local_location
    from ..io.store import BadLocation, BlobStore, StoreUnavailable

    location = local_location(location)
    try:
        BlobStore(location)
    except BadLocation as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    except StoreUnavailable as exc:
        click.secho(f"warning: {exc}; {meanwhile}", fg="yellow", err=True)
    return location
