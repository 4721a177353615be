"""Options and helpers shared by the verbs of the ``ear-stream`` command."""

from __future__ import annotations

from pathlib import Path

import click

from ..model.config import DEFAULT_PRECISION, DEFAULT_RUNTIME, PRECISION_CHOICES, RUNTIME_CHOICES


def default_of(config_cls, name: str):  # type: ignore[no-untyped-def]
    """The default of a dataclass config's field: click options show the one definition, never a copy."""
    import dataclasses

    for f in dataclasses.fields(config_cls):
        if f.name == name:
            return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{config_cls.__name__} has no field {name!r}")


#: --precision on every verb that runs the U-Net (ear_stream.model.precision)
PRECISION_OPTION = click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default=DEFAULT_PRECISION,
    show_default=True,
    help="U-Net numeric path. auto = bf16 autocast + channels_last on CUDA and on CPUs with bf16 units "
    "(AVX512-BF16/AMX, detected at run time), else fp32 + channels_last. int8 is refused: post-training INT8 lost "
    "0.09 image AUROC (bar: 0.01).",
)

#: --compile on the verbs that score (training has its own, TrainConfig.compile)
COMPILE_OPTION = click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the U-Net for inference (inductor; one graph for every batch size), warmed up before "
    "the first batch.",
)

#: --runtime on the verbs that score: the torch pipeline, or an exported graph (``ear-stream export``)
RUNTIME_OPTION = click.option(
    "--runtime",
    type=click.Choice(RUNTIME_CHOICES),
    default=DEFAULT_RUNTIME,
    show_default=True,
    help="What runs the scoring function: torch, or the model exported on first use (cached per version under "
    "~/.cache/ear-stream/exports, $EAR_STREAM_EXPORT_CACHE) and run on the CPU by ONNX Runtime, OpenVINO or an "
    "AOTInductor package; the same rows either way (BENCHMARKS.md compares their speed and parity).",
)

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


def _finite(ctx, param, value):  # type: ignore[no-untyped-def]
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value} (NaN or inf would pass or fail everything)")
    return value


THRESHOLD_OPTION = click.option(
    "--threshold",
    "threshold_override",
    type=float,
    default=None,
    callback=_finite,
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


SHARDS_HELP = (
    "Spread the input over this many stream keys, <stream>:{k} (and <dlq>:{k}) for k in 0..N-1, so that a Redis "
    "Cluster spreads them over its primaries; every verb of one pool must give the same N (1: one stream)."
)


def shards_option(fn):  # type: ignore[no-untyped-def]
    """--shards: one definition for the stream verbs and ``dlq`` (default: StreamConfig's)."""
    from ..stream.protocol import MAX_SHARDS, StreamConfig

    return click.option(
        "--shards",
        type=click.IntRange(1, MAX_SHARDS),
        default=default_of(StreamConfig, "shards"),
        show_default=True,
        help=SHARDS_HELP,
    )(fn)


def _stream_options(fn):
    """--stream/--group/--dlq/--results-stream/--shards shared by push, worker, status and cluster."""
    from ..stream.protocol import StreamConfig

    fn = shards_option(fn)
    fn = click.option("--results-stream", default=None, help="Also XADD id/product/score/verdict here (e.g. ear:out).")(
        fn
    )
    fn = click.option(
        "--dlq",
        default=default_of(StreamConfig, "dlq"),
        show_default=True,
        help="Dead-letter stream (entries + reason).",
    )(fn)
    fn = click.option(
        "--group", default=default_of(StreamConfig, "group"), show_default=True, help="Consumer group of the workers."
    )(fn)
    fn = click.option("--stream", default=default_of(StreamConfig, "stream"), show_default=True, help="Input stream.")(
        fn
    )
    return fn


def _retention_options(fn):
    """What the workers keep in Redis: --retain, the caps of the verdict and dead-letter streams, eviction."""
    from ..stream.protocol import RETAIN_CHOICES, StreamConfig

    fn = click.option(
        "--allow-eviction",
        is_flag=True,
        help="Start even if Redis' maxmemory-policy can evict keys (it can evict the input stream itself).",
    )(fn)
    fn = click.option(
        "--dlq-spill",
        "dlq_spill_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Local folder for dead letters a full Redis refuses (kept until it has room, then posted; "
        "default: OUT-dlq-spill beside a local --out, ~/.local/state/ear-stream/dlq-spill for a store).",
    )(fn)
    fn = click.option(
        "--dlq-maxlen",
        default=default_of(StreamConfig, "dlq_maxlen"),
        show_default=True,
        help="Approximate cap of the dead-letter stream.",
    )(fn)
    fn = click.option(
        "--results-maxlen",
        default=default_of(StreamConfig, "results_maxlen"),
        show_default=True,
        help="Approximate cap of the verdict stream.",
    )(fn)
    fn = click.option(
        "--retain",
        type=click.Choice(RETAIN_CHOICES),
        default=default_of(StreamConfig, "retain"),
        show_default=True,
        help="none: a scored entry is deleted from the input stream with its ack; acked: deleted only once "
        "every consumer group (e.g. an archiver you attached) has acknowledged it.",
    )(fn)
    return fn


def stream_config(stream, group, dlq, results_stream, retain, results_maxlen, dlq_maxlen, shards=1, **extra):  # type: ignore[no-untyped-def]
    """The StreamConfig that --stream/--group/--dlq/--results-stream and the retention options describe."""
    from ..stream.protocol import StreamConfig

    return StreamConfig(
        stream=stream,
        group=group,
        dlq=dlq,
        results=results_stream,
        shards=shards,
        retain=retain,
        results_maxlen=results_maxlen,
        dlq_maxlen=dlq_maxlen,
        **extra,
    )


def payload_options(fn):  # type: ignore[no-untyped-def]
    """``--store``, ``--fetch-threads``, ``--payload-after``: where a worker fetches claim-check entries' images
    (defaults: :class:`~ear_stream.stream.settings.WorkerConfig`'s fields)."""
    from ..stream.settings import PAYLOAD_AFTER, WorkerConfig

    fn = click.option(
        "--payload-after",
        type=click.Choice(PAYLOAD_AFTER),
        default=default_of(WorkerConfig, "payload_after"),
        show_default=True,
        help="What happens to a claim check's object once its row is durable: delete (the claim is consumed) or "
        "keep (for review and refine; the store's own retention ages it out).",
    )(fn)
    fn = click.option(
        "--fetch-threads",
        type=click.IntRange(1, 256),
        default=default_of(WorkerConfig, "fetch_threads"),
        show_default=True,
        help="Claim-check objects fetched at once, while the device scores the previous batch.",
    )(fn)
    fn = click.option(
        "--store",
        "payload_store",
        default=None,
        metavar="DIR|URI",
        help="Where claim-check entries' images are (push --store): a folder or a pyarrow filesystem URI. An object "
        "that is missing or whose size or sha256 differ is dead-lettered (payload_missing, payload_mismatch); a "
        "store that cannot be reached is waited for, never a dead letter.",
    )(fn)
    return fn


def payload_config(payload_store: str | None, fetch_threads: int, payload_after: str) -> dict[str, object]:
    """The checked ``--store`` options as :class:`~ear_stream.stream.settings.WorkerConfig` fields."""
    from .keep import checked_store

    if payload_store is not None:
        payload_store = checked_store(payload_store, "--store", "claim-check entries wait until it can be reached")
    return {"payload_store": payload_store, "fetch_threads": fetch_threads, "payload_after": payload_after}


def worker_options(fn):  # type: ignore[no-untyped-def]
    """Every option of a stream worker, one definition for ``worker`` and ``cluster``; defaults are the
    fields of :class:`~ear_stream.stream.settings.WorkerConfig` and :class:`~ear_stream.stream.protocol.StreamConfig`.

    Only ``worker``'s ``--name`` and ``--exit-when-idle`` are its own: ``cluster`` names its actors by slot
    and decides itself when they leave (README, "Ray cluster").
    """
    from ..stream.protocol import StreamConfig
    from ..stream.settings import WorkerConfig
    from .keep import keep_options

    def w(name: str):  # type: ignore[no-untyped-def]
        return default_of(WorkerConfig, name)

    decorators = [
        click.option(
            "--batch-size", default=w("batch_size"), show_default=True, help="Entries read and scored per batch."
        ),
        DEVICE_OPTION,
        PRECISION_OPTION,
        COMPILE_OPTION,
        RUNTIME_OPTION,
        click.option(
            "--flush-rows",
            default=w("flush_rows"),
            show_default=True,
            help="Write a Parquet part after this many rows ...",
        ),
        click.option(
            "--flush-seconds",
            default=w("flush_seconds"),
            show_default=True,
            help="... or after this long, whichever first.",
        ),
        click.option(
            "--claim-idle-ms",
            default=default_of(StreamConfig, "claim_idle_ms"),
            show_default=True,
            help="Reclaim entries another consumer left unacknowledged this long (XAUTOCLAIM).",
        ),
        click.option(
            "--max-deliveries",
            default=default_of(StreamConfig, "max_deliveries"),
            show_default=True,
            help="Dead-letter entries delivered more often.",
        ),
        DINO_OPTION,
        tile_options,
        THRESHOLD_OPTION,
        click.option(
            "--drift-window",
            default=w("drift_window"),
            show_default=True,
            help="Good-side scores and frames kept per product for drift.",
        ),
        click.option(
            "--drift-alert",
            default=w("drift_alert"),
            show_default=True,
            help="Drift ratio (live good-side p50/p95 over the calibration's) at which the worker warns, for models "
            "calibrated without image statistics (older ones); the ratio is reported for every model.",
        ),
        click.option(
            "--drift-shift",
            default=w("drift_shift"),
            show_default=True,
            help="Input drift at which the worker warns: the live median of an image statistic (brightness, "
            "contrast, sharpness, recovery error) this many held-out spreads from the good images'.",
        ),
        click.option(
            "--metrics-port",
            type=int,
            default=w("metrics_port"),
            help="Serve Prometheus metrics on this port (cluster: actor i serves on PORT+i on its node).",
        ),
        click.option(
            "--metrics-host",
            default=w("metrics_host"),
            show_default=True,
            help="Address of the metrics endpoint (cluster: on each actor's node; 0.0.0.0 to be scraped from "
            "elsewhere).",
        ),
        click.option(
            "--frame-check/--no-frame-check",
            default=True,
            show_default=True,
            help="Flag near-constant frames and absurd aspect ratios (camera faults) as invalid_frame: written with "
            "the reason, never passed as ok.",
        ),
        click.option(
            "--shadow",
            is_flag=True,
            help="Also score each product's refined candidate (MODELS/.candidates/<product>, from `ear-stream "
            "refine`) and write its score beside the verdict (shadow_score, shadow_version); the verdict stays the "
            "promoted model's.",
        ),
        click.option(
            "--own-shards",
            default=None,
            metavar="K,K,…",
            callback=_shard_list,
            help="With --shards: the shards this worker reads (default: all), one loop each.",
        ),
        keep_options,
        payload_options,
        _stream_options,
        _retention_options,
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def _shard_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """``--own-shards 0,2,5`` as a sorted list of distinct shard numbers, each below ``--shards``."""
    if value is None:
        return None
    try:
        own = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of shard numbers, got {value!r}") from None
    if not own or own[0] < 0:
        raise click.BadParameter(f"shard numbers are 0 or more, got {value!r}")
    return own  # checked against --shards in worker_config, once every option is read


def check_runtime_options(
    runtime: str, compile_: bool = False, tile: int | None = None, tile_overlap: int | None = None, device: str = "auto"
) -> None:
    """Refuse at start what an exported runtime cannot honour (not per entry, later), and a missing runtime."""
    if runtime == DEFAULT_RUNTIME:
        return
    if compile_ or tile is not None or tile_overlap is not None:
        raise click.UsageError("--runtime runs an exported graph: --compile, --tile and --tile-overlap do not apply")
    if device == "cuda":
        raise click.UsageError("--runtime runs exported graphs on the CPU in this build: --device cpu (or auto)")
    from ..model.exported import require_runtime

    require_runtime(runtime)


def worker_config(redis_url: str, models_dir, out_dir, **opts):  # type: ignore[no-untyped-def]
    """The WorkerConfig that :func:`worker_options` (plus the verb's own keyword values) describe."""
    from ..stream.settings import WorkerConfig
    from .keep import keep_config

    stream_keys = ("stream", "group", "dlq", "results_stream", "retain", "results_maxlen", "dlq_maxlen", "shards")
    scfg = stream_config(
        **{k: opts.pop(k) for k in stream_keys},
        max_deliveries=opts.pop("max_deliveries"),
        claim_idle_ms=opts.pop("claim_idle_ms"),
    )
    opts["compile"] = opts.pop("compile_")
    check_runtime_options(opts["runtime"], opts["compile"], opts.get("tile"), opts.get("tile_overlap"), opts["device"])
    if not opts.pop("frame_check"):
        opts.update(frame_min_std=0.0, frame_max_aspect=0.0)
    opts["threshold"] = opts.pop("threshold_override")
    opts.update(keep_config(*(opts.pop(k) for k in ("keep_images", "keep_passed", "keep_bytes", "keep_days"))))
    opts.update(payload_config(*(opts.pop(k) for k in ("payload_store", "fetch_threads", "payload_after"))))
    own = opts.get("own_shards")
    if own is not None and own[-1] >= scfg.shards:
        raise click.BadParameter(
            f"shards are 0..{scfg.shards - 1} with --shards {scfg.shards}, got {own[-1]}", param_hint="--own-shards"
        )
    return WorkerConfig(redis_url=redis_url, models_dir=models_dir, out_dir=out_dir, stream=scfg, **opts)


REDIS_OPTION = click.option(
    "--redis",
    "redis_url",
    required=True,
    envvar="EAR_REDIS_URL",
    show_envvar=True,
    help="Redis URL: redis://[:password@]host:port/db, or rediss:// for TLS.",
)


def announce_backend(precision: str | None = None, device: str = "auto") -> None:
    """One stderr line saying what runs the fused ops and why (extension cpu+cuda / cpu / reference), and
    which numeric path the U-Net takes on this machine."""
    from ..model import ops

    line = f"ops backend: {ops.backend_description()}"
    if precision is not None:
        from ..inspect.pipeline import resolve_device
        from ..model.precision import cpu_capability, resolve_precision

        dev = resolve_device(device)
        line += f"; precision: {resolve_precision(precision, dev).describe()} on {dev.type}"
        if dev.type == "cpu":
            line += f" ({cpu_capability()})"
    click.echo(line, err=True)
