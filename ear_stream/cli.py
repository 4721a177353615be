"""The ``ear-stream`` command line (click)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .config import METHODS, MOSAIC_SCALES, SALIENCY_VARIANTS, SCHEDULES, ModelConfig, TrainConfig

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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ear-stream")
def main() -> None:
    """EAR (Excision And Recovery) visual defect detection.

    Train one model per product on good images only, evaluate it on a labelled
    MVTec-AD-layout folder, score image files into Parquet, or run the Redis
    stream workers. Nothing here downloads anything: DINO weights are a local
    file (--dino-weights or EAR_DINO_WEIGHTS).
    """


@main.command()
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT (MVTec AD layout: CAT/train/good).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--image-size", default=256, show_default=True, help="Side the images are resized to (multiple of 32).")
@click.option("--epochs", default=20, show_default=True, help="Passes over the training images.")
@click.option("--batch-size", default=8, show_default=True, help="Images per optimisation step.")
@click.option("--lr", default=1e-4, show_default=True, help="Adam learning rate.")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="fixed",
    show_default=True,
    help="Learning-rate schedule: fixed, linear warm-up, or SGDR (cosine with restarts).",
)
@click.option("--kernel-size", type=click.Choice(["3", "5"]), default="3", show_default=True, help="U-Net conv kernel.")
@click.option("--width", "base_channels", default=32, show_default=True, help="U-Net base channel count.")
@click.option(
    "--saliency",
    type=click.Choice(SALIENCY_VARIANTS),
    default=None,
    help="dino = full EAR; none = mosaic the whole image (no weights needed); binary = DINO mask without "
    "mosaic hint. Default: dino when DINO weights are given, else none.",
)
@DINO_OPTION
@click.option(
    "--mosaic-scale",
    default="auto",
    show_default=True,
    help="Mosaic tile size m, or 'auto' to estimate it from the images' edge response (r10).",
)
@DEVICE_OPTION
@click.option("--seed", default=0, show_default=True, help="Seed for the split, shuffling and initialisation.")
@click.option("--max-steps", default=None, type=int, help="Stop after this many steps (quick trials).")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="ear",
    show_default=True,
    help="ear = one excision + one U-Net pass; riad = the RIAD baseline (random disjoint masks, 12 U-Net passes "
    "at inference), same U-Net, losses and scorer.",
)
def train(
    data_root,
    category,
    out_dir,
    image_size,
    epochs,
    batch_size,
    lr,
    schedule,
    kernel_size,
    base_channels,
    saliency,
    dino_weights,
    mosaic_scale,
    device,
    seed,
    max_steps,
    method,
) -> None:
    """Train a model for one product on DATA_ROOT/CATEGORY/train/good.

    A tenth of the good images is held out to calibrate the decision
    threshold. The model directory holds weights.safetensors and manifest.json.
    """
    from .training import train_model

    has_weights = bool(dino_weights or os.environ.get("EAR_DINO_WEIGHTS"))
    if saliency is None:
        saliency = "dino" if has_weights else "none"
        if saliency == "none" and method == "ear":
            _warn(
                "No DINO weights configured: training with saliency 'none' (EAR w/o attention, whole image "
                "mosaicked). Pass --dino-weights PATH or set EAR_DINO_WEIGHTS for full EAR."
            )
    m = _mosaic_scale(mosaic_scale)
    try:
        cfg = ModelConfig(
            image_size=image_size,
            saliency=saliency,
            kernel_size=int(kernel_size),
            base_channels=base_channels,
            method=method,
        )
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule, seed=seed)
        path = train_model(
            data_root,
            category,
            out_dir,
            cfg,
            tcfg,
            mosaic_scale=m,
            dino_weights=dino_weights,
            device=device,
            max_steps=max_steps,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    from .artifact import load_manifest

    man = load_manifest(path)
    click.echo(
        f"model written to {path} (m={man.config.mosaic_scale}, threshold={man.threshold:.4f}, "
        f"version {man.model_version})"
    )


@main.command("eval")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder under DATA_ROOT with test/ and ground_truth/.")
@MODEL_OPTION
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a self-contained HTML report (ROC curve, per-defect table, worst examples).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write metrics as JSON (image_auroc, pixel_auroc, n_good, n_defect, per_defect, ...).",
)
@click.option("--batch-size", default=16, show_default=True, help="Images per scoring batch.")
@DINO_OPTION
@DEVICE_OPTION
@click.option("--box", type=int, default=None, help="Override the model's MSGMS box-filter size (k <= 1 disables).")
@click.option("--median/--no-median", default=None, help="Override the model's 3x3 median before the gradients.")
def evaluate_cmd(
    data_root, category, model_dir, report, json_out, batch_size, dino_weights, device, box, median
) -> None:
    """Image and pixel AUROC of a model on DATA_ROOT/CATEGORY/test."""
    from .evaluation import evaluate, write_report
    from .pipeline import Pipeline

    try:
        pipe = Pipeline.from_artifact(model_dir, device=device, dino_weights=dino_weights)
        if box is not None:
            pipe.config.scoring.box = box
        if median is not None:
            pipe.config.scoring.median = median
        result, material = evaluate(pipe, data_root, category, batch_size=batch_size)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    pix = "n/a" if result.pixel_auroc is None else f"{result.pixel_auroc:.4f}"
    click.echo(
        f"{category}: image AUROC {result.image_auroc:.4f}, pixel AUROC {pix} "
        f"({result.n_good} good, {result.n_defect} defective, {result.ms_per_image:.1f} ms/image)"
    )
    for defect, row in result.per_defect.items():
        click.echo(f"  {defect:<12} n={row['n']:<4} AUROC {row['image_auroc']:.4f}  flagged {row['detected']:.1%}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2))
    if report:
        path = write_report(report, pipe, result, material, title=f"EAR evaluation: {category}")
        click.echo(f"report: {path}")


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@MODEL_OPTION
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Results root; Parquet parts go to OUT/product=P/date=YYYY-MM-DD/.",
)
@click.option("--product", default=None, help="Product name in the rows (default: the model directory's name).")
@click.option(
    "--save-maps",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write heatmap overlays (PNG) here and embed them in the Parquet 'heatmap' column.",
)
@click.option("--batch-size", default=16, show_default=True, help="Images per scoring batch.")
@DINO_OPTION
@DEVICE_OPTION
def score(inputs, model_dir, out_dir, product, save_maps, batch_size, dino_weights, device) -> None:
    """Score image files (INPUTS: files, folders or globs) into Parquet.

    Undecodable files are listed on stderr with the reason and the command exits
    with status 2 after scoring the rest.
    """
    from .decode import list_images
    from .pipeline import Pipeline
    from .scoring import score_files

    try:
        files = list_images(list(inputs))
        pipe = Pipeline.from_artifact(model_dir, device=device, dino_weights=dino_weights)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not files:
        raise click.ClickException("no images found in the given inputs")
    report = score_files(pipe, files, out_dir, product or model_dir.name, batch_size, save_maps)
    click.echo(f"scored {report.scored} images into {len(report.written)} Parquet part(s) under {out_dir}")
    for _path, reason, message in report.rejected:
        click.echo(f"rejected [{reason}] {message}", err=True)
    if report.rejected:
        sys.exit(2)


@main.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def results(results_dir, as_json) -> None:
    """Summarise a results tree: rows per product (duplicates by id dropped), anomaly rate, score quantiles."""
    from .results import read_results, summarize

    raw = read_results(results_dir, dedupe=False).num_rows
    summary = summarize(read_results(results_dir))
    summary["raw_rows"] = raw
    summary["duplicates_dropped"] = raw - summary["rows"]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['rows']} unique ids ({summary['duplicates_dropped']} duplicate rows dropped)")
    for product, s in summary["products"].items():
        click.echo(
            f"  {product:<16} n={s['count']:<6} anomalies={s['anomalies']:<5} rate={s['anomaly_rate']:.1%} "
            f"score p50={s['score_p50']:.4f} p95={s['score_p95']:.4f} max={s['score_max']:.4f}"
        )


def _stream_options(fn):
    """--stream/--group/--dlq/--results-stream shared by push, worker, status and cluster."""
    fn = click.option("--results-stream", default=None, help="Also XADD id/product/score/verdict here (e.g. ear:out).")(
        fn
    )
    fn = click.option("--dlq", default="ear:dlq", show_default=True, help="Dead-letter stream (entries + reason).")(fn)
    fn = click.option("--group", default="ear-workers", show_default=True, help="Consumer group of the workers.")(fn)
    fn = click.option("--stream", default="ear:in", show_default=True, help="Input stream.")(fn)
    return fn


REDIS_OPTION = click.option(
    "--redis",
    "redis_url",
    required=True,
    envvar="EAR_REDIS_URL",
    show_envvar=True,
    help="Redis URL: redis://[:password@]host:port/db, or rediss:// for TLS.",
)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@REDIS_OPTION
@click.option("--product", required=True, help="Product name; a worker needs MODELS_DIR/<product>/.")
@click.option("--id-prefix", default="", help="Prefix of the entry ids (the file path follows it).")
@click.option("--maxlen", type=int, default=None, help="Trim the stream to about this many entries (XADD MAXLEN ~).")
@_stream_options
def push(inputs, redis_url, product, id_prefix, maxlen, stream, group, dlq, results_stream) -> None:
    """XADD image files (INPUTS: files, folders or globs) to the input stream.

    Each entry carries id (prefix + path), product, the encoded image bytes and a
    meta JSON with the file name. Invalid files are refused before they reach Redis.
    """
    from tqdm import tqdm

    from . import queue as q
    from .decode import list_images

    cfg = q.StreamConfig(stream=stream, group=group, dlq=dlq, results=results_stream)
    client = q.connect(redis_url)
    files = list_images(list(inputs))
    refused = 0
    for path in tqdm(files, desc=f"pushing {product}", file=sys.stderr):
        try:
            q.push(client, product, path.read_bytes(), f"{id_prefix}{path}", {"file": path.name}, cfg, maxlen)
        except q.ValidationError as exc:
            refused += 1
            click.echo(f"refused [{exc.reason}] {path}: {exc}", err=True)
    click.echo(f"pushed {len(files) - refused} images to {stream}")
    if refused:
        sys.exit(2)


@main.command()
@REDIS_OPTION
@MODELS_DIR_OPTION
@RESULTS_OPTION
@click.option("--batch-size", default=32, show_default=True, help="Entries read and scored per batch.")
@DEVICE_OPTION
@click.option("--name", default=None, help="Consumer name (default host-pid); reuse it to resume its pending entries.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address of the metrics endpoint.")
@click.option("--flush-rows", default=256, show_default=True, help="Write a Parquet part after this many rows ...")
@click.option("--flush-seconds", default=2.0, show_default=True, help="... or after this long, whichever first.")
@click.option(
    "--claim-idle-ms",
    default=60_000,
    show_default=True,
    help="Reclaim entries another consumer left unacknowledged this long (XAUTOCLAIM).",
)
@click.option("--max-deliveries", default=5, show_default=True, help="Dead-letter entries delivered more often.")
@click.option("--exit-when-idle", type=float, default=None, help="Leave once the stream is drained for this long (s).")
@DINO_OPTION
@_stream_options
def worker(
    redis_url,
    models_dir,
    out_dir,
    batch_size,
    device,
    name,
    metrics_port,
    metrics_host,
    flush_rows,
    flush_seconds,
    claim_idle_ms,
    max_deliveries,
    exit_when_idle,
    dino_weights,
    stream,
    group,
    dlq,
    results_stream,
) -> None:
    """Score the input stream into Parquet until SIGTERM/SIGINT (one process, no Ray).

    Rows are written to a durable Parquet part before the entries are acknowledged;
    undecodable or invalid entries go to the dead-letter stream with the reason.
    """
    import logging

    from . import queue as q
    from .worker import Worker, WorkerConfig, default_worker_name

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scfg = q.StreamConfig(
        stream=stream,
        group=group,
        dlq=dlq,
        results=results_stream,
        max_deliveries=max_deliveries,
        claim_idle_ms=claim_idle_ms,
    )
    cfg = WorkerConfig(
        redis_url=redis_url,
        models_dir=models_dir,
        out_dir=out_dir,
        name=name or default_worker_name(),
        stream=scfg,
        batch_size=batch_size,
        device=device,
        dino_weights=dino_weights,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        exit_when_idle_s=exit_when_idle,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    w = Worker(cfg)
    w.install_signal_handlers()
    stats = w.run()
    click.echo(json.dumps(stats))


@main.command()
@REDIS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_stream_options
def status(redis_url, as_json, stream, group, dlq, results_stream) -> None:
    """Stream length, group lag and pending, pending per consumer, DLQ size, live workers."""
    from . import queue as q

    st = q.stream_status(q.connect(redis_url), q.StreamConfig(stream=stream, group=group, dlq=dlq))
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    g = st["group"]
    click.echo(f"stream {st['stream']}: length {st['length']}, dead letters {st['dlq']}")
    click.echo(
        f"group {g['name']}: lag {g.get('lag')}, pending {g.get('pending', 0)}, consumers {g.get('consumers', 0)}"
    )
    for consumer, c in g.get("per_consumer", {}).items():
        click.echo(f"  consumer {consumer}: pending {c['pending']}, idle {c['idle_ms'] / 1000:.1f}s")
    click.echo(f"live workers: {len(st['workers'])}")
    for name, w in st["workers"].items():
        click.echo(
            f"  {name}: scored {w.get('scored')}, dead letters {w.get('dead_letters')}, products {w.get('products')}"
        )


@main.command()
@REDIS_OPTION
@MODELS_DIR_OPTION
@RESULTS_OPTION
@click.option("--address", default=None, help="Ray cluster: 'auto', 'ray://head:10001'; default: start a local Ray.")
@click.option("--min-workers", default=1, show_default=True, help="Fewest inspection actors.")
@click.option("--max-workers", default=4, show_default=True, help="Most inspection actors (one GPU each on GPU nodes).")
@click.option("--batch-size", default=32, show_default=True, help="Entries read and scored per batch, per actor.")
@click.option("--high-watermark", default=256, show_default=True, help="Backlog per actor that triggers scale-up.")
@click.option("--cooldown", default=60.0, show_default=True, help="Seconds of empty backlog before scaling down.")
@click.option("--poll", default=2.0, show_default=True, help="Seconds between supervisor decisions.")
@click.option("--exit-when-drained", is_flag=True, help="Stop (draining the actors) once the stream is empty.")
@click.option("--max-seconds", type=float, default=None, help="Stop after this long.")
@DINO_OPTION
@_stream_options
def cluster(
    redis_url,
    models_dir,
    out_dir,
    address,
    min_workers,
    max_workers,
    batch_size,
    high_watermark,
    cooldown,
    poll,
    exit_when_drained,
    max_seconds,
    dino_weights,
    stream,
    group,
    dlq,
    results_stream,
) -> None:
    """Run the inspection actors on Ray, scaled between --min-workers and --max-workers by the stream's backlog.

    One actor per GPU (num_gpus=1) on GPU clusters, CPU actors otherwise; actors
    restart on failure; the supervisor asks the Ray autoscaler for the resources
    the backlog calls for (request_resources). SIGINT/SIGTERM drain the actors.
    """
    import logging
    import signal

    from . import queue as q
    from .worker import WorkerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from workers.local import init_ray
    from workers.policy import ScalingPolicy
    from workers.supervisor import Supervisor

    init_ray(address)
    scfg = q.StreamConfig(stream=stream, group=group, dlq=dlq, results=results_stream)
    template = WorkerConfig(
        redis_url=redis_url,
        models_dir=models_dir.resolve(),
        out_dir=out_dir,
        stream=scfg,
        batch_size=batch_size,
        dino_weights=dino_weights,
    )
    policy = ScalingPolicy(
        min_workers=min_workers, max_workers=max_workers, high_watermark=high_watermark, scale_down_cooldown_s=cooldown
    )
    sup = Supervisor(template, policy, poll_s=poll)
    stopping = {"flag": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.update(flag=True))
    try:
        sup.run(until=lambda: stopping["flag"] or (exit_when_drained and sup.drained()), max_seconds=max_seconds)
    finally:
        sup.shutdown()
    click.echo("cluster stopped; all actors drained")


@main.command("mosaic-search")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--category", required=True, help="Product folder with train/good and a labelled test/ set.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the trial models.")
@click.option("--scales", default=",".join(map(str, MOSAIC_SCALES)), show_default=True, help="Candidate m values.")
@click.option("--image-size", default=128, show_default=True)
@click.option("--epochs", default=5, show_default=True)
@click.option("--width", "base_channels", default=32, show_default=True, help="U-Net base channel count.")
@click.option("--saliency", type=click.Choice(SALIENCY_VARIANTS), default="none", show_default=True)
@DINO_OPTION
@DEVICE_OPTION
@click.option("--seed", default=0, show_default=True)
def mosaic_search(
    data_root, category, out_dir, scales, image_size, epochs, base_channels, saliency, dino_weights, device, seed
) -> None:
    """Grid search of the mosaic scale m on a labelled validation set (image AUROC per m)."""
    from .evaluation import evaluate
    from .pipeline import Pipeline
    from .training import train_model

    table = {}
    for m in [int(s) for s in scales.split(",")]:
        cfg = ModelConfig(image_size=image_size, saliency=saliency, base_channels=base_channels)
        path = train_model(
            data_root,
            category,
            out_dir / f"m{m}",
            cfg,
            TrainConfig(epochs=epochs, seed=seed),
            mosaic_scale=m,
            dino_weights=dino_weights,
            device=device,
        )
        res, _ = evaluate(Pipeline.from_artifact(path, device=device, dino_weights=dino_weights), data_root, category)
        table[m] = res.image_auroc
        click.echo(f"m={m:<3} image AUROC {res.image_auroc:.4f}")
    best = max(table, key=lambda k: table[k])
    click.echo(f"best m = {best}")
    (out_dir / "mosaic_search.json").write_text(json.dumps({"auroc": table, "best": best}, indent=2))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("which", type=click.Choice(["ops", "worker", "study"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(which, args) -> None:
    """Run a benchmark script from benchmarks/ (ops, worker or study); ARGS go to the script (try ARGS = --help)."""
    import runpy

    script = (
        Path(__file__).resolve().parents[1] / "benchmarks" / f"{'study' if which == 'study' else 'bench_' + which}.py"
    )
    if not script.is_file():
        raise click.ClickException(f"{script} not found: benchmarks ship with the source checkout")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


@main.group()
def weights() -> None:
    """Manage the DINO ViT-S/8 weights file."""


@weights.command("fetch")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def weights_fetch(dest) -> None:
    """Download the official DINO ViT-S/8 checkpoint to DEST (needs internet; the only networked command)."""
    from .saliency import fetch_dino_weights

    try:
        click.echo(f"saved {fetch_dino_weights(dest)}")
    except OSError as exc:
        raise click.ClickException(f"download failed (no internet?): {exc}") from exc


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Where the generated data, model and results go.",
)
@click.option("--epochs", default=3, show_default=True, help="Training epochs for the demo model.")
@click.option("--image-size", default=64, show_default=True)
@click.option("--copies", default=4, show_default=True, help="Times each test image is pushed (with distinct ids).")
@click.option("--workers", "n_workers", default=2, show_default=True, help="Most Ray actors.")
def demo(workdir, epochs, image_size, copies, n_workers) -> None:
    """Run the main job on embedded defaults.

    Starts a local redis-server and a local Ray, trains (or reuses) a small model on
    a generated sample, pushes the test images, lets the Ray actors score them into
    Parquet, prints the summary and the HTML report's path, and shuts everything down.
    """
    from .demo import run_demo

    run_demo(workdir, epochs=epochs, image_size=image_size, copies=copies, max_workers=n_workers)


if __name__ == "__main__":
    main()
