"""Streaming verbs: push, worker, status and cluster (Redis Streams, Ray)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..stream.protocol import DEFAULT_INLINE_BELOW
from ..stream.scaling import DEFAULT_POLL_S, ScalingPolicy
from ..stream.settings import SPREAD_CHOICES
from .options import (
    MODELS_DIR_OPTION,
    REDIS_OPTION,
    RESULTS_OPTION,
    _stream_options,
    announce_backend,
    default_of,
    worker_config,
    worker_options,
)


def _scaling(name: str):  # type: ignore[no-untyped-def]
    """The default of a ``cluster`` scaling option: the field of the pure policy (no Ray imported)."""
    return default_of(ScalingPolicy, name)


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@REDIS_OPTION
@click.option("--product", required=True, help="Product name; a worker needs MODELS_DIR/<product>/.")
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The workers' model folder: refuse the push unless MODELS/<product>/ holds a model.",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Push without decoding each file first (format, pixel budget, integrity): the workers dead-letter "
    "what they cannot decode.",
)
@click.option("--id-prefix", default="", help="Prefix of the entry ids (the file path follows it).")
@click.option(
    "--max-backlog",
    default=10_000,
    show_default=True,
    help="Wait while the input stream holds this many unscored entries (backpressure; nothing is trimmed).",
)
@click.option(
    "--wait-timeout", default=30.0, show_default=True, help="Give up (exit status 3) after waiting this long (s)."
)
@click.option(
    "--store",
    default=None,
    metavar="DIR|URI",
    help="Claim checks: put each image in this store (a folder, or a pyarrow filesystem URI such as "
    "s3://bucket/prefix?endpoint_override=host:port) and push its reference (uri, sha256, bytes) instead of the "
    "bytes; the workers need the same store (worker --store).",
)
@click.option(
    "--wait-replicas",
    type=click.IntRange(0, 16),
    default=0,
    show_default=True,
    help="Return from each XADD only once this many replicas have the entry (WAIT): a failover of the primary "
    "right after cannot lose it.",
)
@click.option(
    "--spread",
    type=click.Choice(SPREAD_CHOICES),
    default=SPREAD_CHOICES[0],
    show_default=True,
    help="With --shards: give each entry the next shard in turn, or its product's shard (one product's entries "
    "stay in order on one shard).",
)
@click.option(
    "--inline-below",
    default=DEFAULT_INLINE_BELOW,
    show_default=True,
    help="With --store: images smaller than this many bytes still travel inline.",
)
@_stream_options
def push(
    inputs,
    redis_url,
    product,
    models_dir,
    no_check,
    id_prefix,
    max_backlog,
    wait_timeout,
    store,
    wait_replicas,
    spread,
    inline_below,
    stream,
    group,
    dlq,
    results_stream,
    shards,
) -> None:
    """XADD image files (INPUTS: files, folders or globs) to the input stream.

    Each entry carries id (prefix + path), product, the encoded image bytes and a
    meta JSON with the file name. Invalid files are refused before they reach Redis
    (one line each, exit status 2): a format other than PNG/JPEG/BMP/TIFF, more
    pixels than the workers decode, a file that does not decode (truncated,
    corrupt), and with --models a product that has no model (nothing is pushed
    then). When the workers fall behind by --max-backlog entries, push waits for
    them; after --wait-timeout it stops with exit status 3, and the files not yet
    pushed are listed as such: nothing is ever dropped.

    With --store, images of --inline-below bytes or more are put in the store
    first (content-addressed, atomically) and the entry carries their claim check:
    Redis holds a few hundred bytes per frame instead of the frame. A store that
    cannot be written stops the push (exit status 4) with the files not pushed
    counted.
    """
    from tqdm import tqdm

    from ..io.decode import list_images
    from ..io.store import StoreError
    from ..stream import queue as q
    from ..stream.shards import make_producer

    if models_dir is not None:
        _require_model(models_dir, product)
    cfg = q.StreamConfig(stream=stream, group=group, dlq=dlq, results=results_stream, shards=shards)
    files = list_images(list(inputs))
    blob_store = _payload_store(store)
    with q.setup_errors(redis_url, "push to the input stream"):
        producer = make_producer(
            q.connect(redis_url, verify=True),
            cfg,
            spread,
            max_backlog=max_backlog,
            wait_timeout_s=wait_timeout,
            store=blob_store,
            inline_below=inline_below,
            replicas=wait_replicas,
        )
        refused = pushed = 0
        for path in tqdm(files, desc=f"pushing {product}", file=sys.stderr, disable=None):  # no bar in logs
            try:
                image = path.read_bytes()
                if not no_check:
                    q.check_image(image)
                producer.push(product, image, f"{id_prefix}{path}", {"file": path.name})
                pushed += 1
            except q.ValidationError as exc:
                refused += 1
                tqdm.write(f"refused [{exc.reason}] {path}: {exc}", file=sys.stderr)  # a line of its own, above the bar
            except q.BackpressureError as exc:
                click.echo(f"pushed {pushed} images to {stream}; {len(files) - pushed - refused} not pushed", err=True)
                click.echo(f"Error: {exc}", err=True)
                sys.exit(3)
            except StoreError as exc:  # the store cannot take the image: nothing was added for it
                click.echo(f"pushed {pushed} images to {stream}; {len(files) - pushed - refused} not pushed", err=True)
                click.echo(f"Error: {exc}", err=True)
                sys.exit(4)
    waited = f" (waited {producer.waited_s:.1f}s for the workers)" if producer.waited_s >= 0.05 else ""
    click.echo(f"pushed {pushed} images to {stream}{waited}" + (f"; refused {refused}" if refused else ""))
    if refused:
        sys.exit(2)


def _payload_store(location: str | None):  # type: ignore[no-untyped-def]
    """The BlobStore of ``push --store`` (None without it); a location that is no store is a usage error."""
    if location is None:
        return None
    from ..io.store import BadLocation, BlobStore, StoreUnavailable

    try:
        return BlobStore(location)
    except (BadLocation, StoreUnavailable) as exc:
        raise click.BadParameter(str(exc), param_hint="--store") from None


def _require_model(models_dir: Path, product: str) -> None:
    """Exit 2 before anything is read or pushed when MODELS/<product>/ has no model: every entry would be
    dead-lettered as ``unknown_product``."""
    from ..model.artifact import MANIFEST_FILE
    from ..stream.protocol import UNKNOWN_PRODUCT, ValidationError, check_product

    try:
        check_product(product)
    except ValidationError as exc:
        click.echo(f"refused [{exc.reason}] product {product!r}: {exc}; nothing pushed", err=True)
        sys.exit(2)
    if not (models_dir / product / MANIFEST_FILE).is_file():
        known = sorted(p.name for p in models_dir.iterdir() if (p / MANIFEST_FILE).is_file())
        click.echo(
            f"refused [{UNKNOWN_PRODUCT}] product {product!r}: no model in {models_dir / product} "
            f"(models there: {', '.join(known) or 'none'}); nothing pushed",
            err=True,
        )
        sys.exit(2)


@click.command()
@REDIS_OPTION
@MODELS_DIR_OPTION
@RESULTS_OPTION
@click.option("--name", default=None, help="Consumer name (default host-pid); reuse it to resume its pending entries.")
@click.option("--exit-when-idle", type=float, default=None, help="Leave once the stream is drained for this long (s).")
@worker_options
def worker(redis_url, models_dir, out_dir, name, exit_when_idle, **opts) -> None:
    """Score the input stream into Parquet until SIGTERM/SIGINT (one process, no Ray).

    Rows are written to a durable Parquet part before the entries are acknowledged;
    undecodable or invalid entries go to the dead-letter stream with the reason.
    The models in MODELS are loaded and warmed up before the first read.
    """
    announce_backend(opts["precision"], opts["device"])
    import logging

    from ..stream import queue as q
    from ..stream.shards import make_worker
    from ..stream.worker import default_worker_name

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = worker_config(
        redis_url,
        models_dir,
        out_dir,
        name=name or default_worker_name(),
        exit_when_idle_s=exit_when_idle,
        **opts,
    )
    with q.setup_errors(redis_url):  # rights cut or the primary demoted while it runs: one line, not a traceback
        w = make_worker(cfg)
        w.install_signal_handlers()
        stats = w.run()
        _mark_stopped(w)
    click.echo(json.dumps(stats))


def _mark_stopped(w) -> None:  # type: ignore[no-untyped-def]
    """The clean-exit marker, so that ``status`` drops this worker now (best effort: Redis may be gone)."""
    import contextlib

    import redis

    with contextlib.suppress(redis.RedisError):
        w.mark_stopped()


@click.command()
@REDIS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_stream_options
def status(redis_url, as_json, stream, group, dlq, results_stream, shards) -> None:
    """Stream lengths, group lag and pending, pending per consumer, DLQ size, Redis memory, live workers.

    Live workers are those whose heartbeat is recent; each one's counts are those of its last heartbeat
    (every 2 s), the same counts as its /metrics (``ear_images_scored_total``: rows durably written).
    Workers that stopped or fell silent are listed apart until their heartbeat expires.
    """
    from ..stream import queue as q

    scfg = q.StreamConfig(stream=stream, group=group, dlq=dlq, results=results_stream or "ear:out", shards=shards)
    with q.setup_errors(redis_url, "read the stream status"):
        st = q.stream_status(q.connect(redis_url, verify=True), scfg)
    if st["persistence_warning"]:
        click.secho(f"warning: {st['persistence_warning']}", fg="yellow", err=True)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    g, mem = st["group"], st["redis"]
    limit = f"{mem['maxmemory'] / 2**20:.0f} MiB" if mem["maxmemory"] else "no limit"
    click.echo(
        f"redis: used_memory {mem['used_memory'] / 2**20:.1f} MiB of {limit}, "
        f"maxmemory-policy {mem['maxmemory_policy']}"
    )
    click.echo("streams: " + ", ".join(f"{name} {n}" for name, n in st["lengths"].items()))
    click.echo(f"stream {st['stream']}: length {st['length']}, dead letters {st['dlq']}")
    click.echo(
        f"group {g['name']}: lag {g.get('lag')}, pending {g.get('pending', 0)}, consumers {g.get('consumers', 0)}"
    )
    for shard, sh in st.get("shards", {}).items():
        click.echo(
            f"  shard {shard}: length {sh['length']}, lag {sh['lag']}, pending {sh['pending']}, "
            f"dead letters {sh['dlq']}, live workers {sh['workers']}"
        )
    for consumer, c in g.get("per_consumer", {}).items():
        click.echo(f"  consumer {consumer}: pending {c['pending']}, idle {c['idle_ms'] / 1000:.1f}s")
    click.echo(f"live workers: {len(st['workers'])}")
    for name, w in st["workers"].items():
        _print_worker(name, w)
    for name, w in st["gone"].items():
        why = "stopped" if q.worker_state(w) == q.STOPPED else f"silent for {w.get('age_s')} s (killed or stuck)"
        _print_worker(f"gone {name}", w, f"{why}; ")


def _print_worker(name: str, w: dict, gone: str = "") -> None:
    """One worker: why it is gone (if it is), its counts as of its last heartbeat, its drift per product."""
    age = f" (heartbeat {w['age_s']} s ago)" if w.get("age_s") is not None and not gone else ""
    spilled = w.get("dead_letters_spilled")
    click.echo(
        f"  {name}: {gone}scored {w.get('scored')}, dead letters {w.get('dead_letters')}, products {w.get('products')}"
        + (f", redis_oom {w['redis_oom']} (Redis was full)" if w.get("redis_oom") not in (None, "0") else "")
        + (f", {spilled} dead letters spilled to disk while Redis was full" if spilled not in (None, "0") else "")
        + (f", warm-up {w['warmup_s']} s" if w.get("warmup_s") else "")
        + _kept_images(w)
        + age
    )
    for product, error in json.loads(w.get("model_errors") or "{}").items():
        click.echo(f"    model {product}: not reloading, the model in hand keeps scoring ({error})")
    from ..stream.drift import describe_drift

    for product, d in json.loads(w.get("drift") or "{}").items():
        flag = "  ALERT" if d.get("alert") else ""
        click.echo(f"    drift {product}: {describe_drift(d)}{flag}")


def _kept_images(w: dict) -> str:
    """What status adds for a worker with --keep-images (images kept, the store's size, those not kept)."""
    if w.get("images_kept") is None:
        return ""
    store = w.get("kept_image_bytes")
    held = f" (store: {w.get('kept_image_objects')} images, {int(store) / 2**20:.1f} MiB)" if store is not None else ""
    failed = w.get("image_keep_failures")
    return f", images kept {w['images_kept']}{held}" + (f", {failed} not kept" if failed not in (None, "0") else "")


@click.command()
@REDIS_OPTION
@MODELS_DIR_OPTION
@RESULTS_OPTION
@click.option("--address", default=None, help="Ray cluster: 'auto', 'ray://head:10001'; default: start a local Ray.")
@click.option("--min-workers", default=_scaling("min_workers"), show_default=True, help="Fewest inspection actors.")
@click.option(
    "--max-workers",
    default=_scaling("max_workers"),
    show_default=True,
    help="Most inspection actors (one GPU each on GPU nodes).",
)
@click.option(
    "--high-watermark",
    default=_scaling("high_watermark"),
    show_default=True,
    help="Backlog per actor that triggers scale-up.",
)
@click.option(
    "--cooldown",
    "scale_down_cooldown_s",
    default=_scaling("scale_down_cooldown_s"),
    show_default=True,
    help="Seconds of empty backlog before scaling down.",
)
@click.option("--poll", default=DEFAULT_POLL_S, show_default=True, help="Seconds between supervisor decisions.")
@click.option("--exit-when-drained", is_flag=True, help="Stop (draining the actors) once the stream is empty.")
@click.option("--max-seconds", type=float, default=None, help="Stop after this long.")
@click.option(
    "--autoscaling-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Autoscaler YAML whose node types decide GPU or CPU actors (default: ~/ray_bootstrap_config.yaml from "
    "'ray up', else the cluster config in the GCS, else the nodes up now).",
)
@worker_options
def cluster(
    redis_url,
    models_dir,
    out_dir,
    address,
    min_workers,
    max_workers,
    high_watermark,
    scale_down_cooldown_s,
    poll,
    exit_when_drained,
    max_seconds,
    autoscaling_config,
    **opts,
) -> None:
    """Run the inspection actors on Ray, scaled between --min-workers and --max-workers by the stream's backlog.

    One actor per GPU (num_gpus=1) on GPU clusters, CPU actors otherwise; actors
    restart on failure; the supervisor asks the Ray autoscaler for the resources
    the backlog calls for (request_resources). SIGINT/SIGTERM drain the actors.
    Takes every worker option but --name (actors are named by slot) and
    --exit-when-idle (see --exit-when-drained); with --metrics-port P, actor i
    serves its metrics on P+i on its node.
    """
    announce_backend(opts["precision"], opts["device"])
    import logging
    import signal

    from ..stream import queue as q

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ear_stream_workers.local import init_ray
    from ear_stream_workers.supervisor import Supervisor

    from ..stream.models import check_models_dir

    check_models_dir(models_dir)  # no model to score: one line here, not every actor failing on Ray
    q.connect(redis_url, verify=True)  # a wrong URL or password fails here, before Ray starts
    init_ray(address)
    template = worker_config(redis_url, models_dir.resolve(), out_dir, **opts)
    policy = ScalingPolicy(
        min_workers=min_workers,
        max_workers=max_workers,
        high_watermark=high_watermark,
        scale_down_cooldown_s=scale_down_cooldown_s,
    )
    sup = Supervisor(template, policy, poll_s=poll, autoscaling_config=autoscaling_config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sup.stop())
    try:
        sup.run(until=lambda: exit_when_drained and sup.drained(), max_seconds=max_seconds)
    finally:
        sup.shutdown()
    click.echo("cluster stopped; all actors drained")
