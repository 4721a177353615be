"""Options and helpers shared by the verbs of the ``ear-stream`` command."""

from __future__ import annotations

from pathlib import Path

import click

DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda"])
DEVICE_OPTION = click.option(
    "--device",
    type=DEVICE_CHOICE,
    default="auto",
    show_default=True,
    help="Where to run; auto picks CUDA when present.",
)
DINO_OPTION = click.option(
    "--dino-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Local DINO ViT-S/8 checkpoint (official .pth or timm layout), needed by saliency dino and binary. "
    "Env: EAR_DINO_WEIGHTS.",
)
MODELS_DIR_OPTION = click.option(
    "--models",
    "models_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of model directories, one per product: MODELS/<product>/ (on Ray: the same path on every node).",
)
RESULTS_OPTION = click.option(
    "--out",
    "out_dir",
    required=True,
    help="Results root: a folder (shared across nodes for Ray), or a pyarrow filesystem URI (s3://…, gs://…).",
)
MODEL_OPTION = click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory written by 'train'.",
)

THRESHOLD_OPTION = click.option(
    "--threshold",
    "threshold_override",
    type=float,
    default=None,
    help="Image threshold for this run only (every product); the model's own stays in its manifest "
    "(change that with 'ear-stream threshold').",
)


def tile_options(fn):  # type: ignore[no-untyped-def]
    """``--tile``/``--tile-overlap``: per-run tiling of native-resolution models (trained with --train-crop)."""
    fn = click.option(
        "--tile-overlap",
        type=click.IntRange(min=0),
        default=None,
        help="Pixels shared by neighbouring tiles (default: tile // 4).",
    )(fn)

    def multiple_of_32(ctx, param, value):  # type: ignore[no-untyped-def]
        if value is not None and value % 32:
            raise click.BadParameter(f"must be a multiple of 32 (the U-Net halves it 5 times), got {value}")
        return value

    return click.option(
        "--tile",
        type=click.IntRange(min=32),
        default=None,
        callback=multiple_of_32,
        help="Tile side (multiple of 32) for native-resolution models; default: the model's (its crop size). "
        "Memory grows with the tile batch, not the image.",
    )(fn)


def _warn(msg: str) -> None:
    click.secho(msg, fg="yellow", err=True)


def _mosaic_scale(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        m = int(value)
    except ValueError:
        raise click.BadParameter(f"must be 'auto' or an integer, got {value!r}") from None
    if m < 1:
        raise click.BadParameter(f"must be >= 1, got {m}")
    return m


def _stream_options(fn):
    """--stream/--group/--dlq/--results-stream shared by push, worker, status and cluster."""
    fn = click.option("--results-stream", default=None, help="Also XADD id/product/score/verdict here (e.g. ear:out).")(
        fn
    )
    fn = click.option("--dlq", default="ear:dlq", show_default=True, help="Dead-letter stream (entries + reason).")(fn)
    fn = click.option("--group", default="ear-workers", show_default=True, help="Consumer group of the workers.")(fn)
    fn = click.option("--stream", default="ear:in", show_default=True, help="Input stream.")(fn)
    return fn


def _retention_options(fn):
    """What the workers keep in Redis: --retain, the caps of the verdict and dead-letter streams, eviction."""
    fn = click.option(
        "--allow-eviction",
        is_flag=True,
        help="Start even if Redis' maxmemory-policy can evict keys (it can evict the input stream itself).",
    )(fn)
    fn = click.option(
        "--dlq-maxlen", default=100_000, show_default=True, help="Approximate cap of the dead-letter stream."
    )(fn)
    fn = click.option(
        "--results-maxlen", default=100_000, show_default=True, help="Approximate cap of the verdict stream."
    )(fn)
    fn = click.option(
        "--retain",
        type=click.Choice(["none", "acked"]),
        default="none",
        show_default=True,
        help="none: a scored entry is deleted from the input stream with its ack; acked: deleted only once "
        "every consumer group (e.g. an archiver you attached) has acknowledged it.",
    )(fn)
    return fn


def stream_config(stream, group, dlq, results_stream, retain, results_maxlen, dlq_maxlen, **extra):  # type: ignore[no-untyped-def]
    """The StreamConfig that --stream/--group/--dlq/--results-stream and the retention options describe."""
    from ..stream import queue as q

    return q.StreamConfig(
        stream=stream,
        group=group,
        dlq=dlq,
        results=results_stream,
        retain=retain,
        results_maxlen=results_maxlen,
        dlq_maxlen=dlq_maxlen,
        **extra,
    )


REDIS_OPTION = click.option(
    "--redis",
    "redis_url",
    required=True,
    envvar="EAR_REDIS_URL",
    show_envvar=True,
    help="Redis URL: redis://[:password@]host:port/db, or rediss:// for TLS.",
)


def announce_backend() -> None:
    """One stderr line saying what runs the fused ops and why (extension cpu+cuda / cpu / reference)."""
    from ..model import ops

    click.echo(f"ops backend: {ops.backend_description()}", err=True)
