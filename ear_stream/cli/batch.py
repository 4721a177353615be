"""Offline batch verbs: score files into Parquet and summarise results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .keep import keep_config, keep_options
from .options import (
    COMPILE_OPTION,
    DEVICE_OPTION,
    DINO_OPTION,
    MODEL_OPTION,
    PRECISION_OPTION,
    RUNTIME_OPTION,
    THRESHOLD_OPTION,
    announce_backend,
    check_runtime_options,
    tile_options,
)


@click.command()
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
@PRECISION_OPTION
@COMPILE_OPTION
@RUNTIME_OPTION
@tile_options
@THRESHOLD_OPTION
@keep_options
@click.option(
    "--timings",
    is_flag=True,
    help="Print where the time went, per stage, on stderr: start-up (from the process's start: imports, model "
    "load), read+decode, prepare, saliency, U-Net, scoring (or graph, for an exported model), verdicts, rows, write.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Score on Ray Data: decode on CPU tasks, score in an actor pool (a GPU each on GPU clusters), rows written "
    "here as without it. --ray alone starts a local Ray; --ray auto or ray://head:10001 joins a cluster. INPUTS may "
    "then be object-store URIs (s3://bucket/prefix); a rerun skips the ids already in --out.",
)
@click.option(
    "--actors",
    default="1:2",
    show_default=True,
    metavar="MIN:MAX",
    help="With --ray: the scoring actor pool's size range (the autoscaler adds nodes up to MAX).",
)
def score(
    inputs,
    model_dir,
    out_dir,
    product,
    save_maps,
    batch_size,
    dino_weights,
    device,
    precision,
    compile_,
    runtime,
    tile,
    tile_overlap,
    threshold_override,
    keep_images,
    keep_passed,
    keep_bytes,
    keep_days,
    timings,
    ray_address,
    actors,
) -> None:
    """Score image files (INPUTS: files, folders or globs) into Parquet.

    Undecodable files are listed on stderr with the reason and the command exits
    with status 2 after scoring the rest. With --keep-images the files of flagged
    items (and of the --keep-passed sample) are kept as read, under their sha256.
    """
    from ..inspect.pipeline import Pipeline
    from ..inspect.stages import StageTimer
    from ..model.exported import is_export_dir, read_export_info
    from ..stream.protocol import check_product

    timer = StageTimer.started_at_process_start()
    if product is None and is_export_dir(model_dir):
        product = read_export_info(model_dir).product  # the exported model's own name, not its folder's
    product = check_product(product or model_dir.name)  # the partition and the column must say the same
    keep = keep_config(keep_images, keep_passed, keep_bytes, keep_days)
    announce_backend(precision, device)
    if ray_address is not None and not _is_ray_address(ray_address):  # `--ray imgs/`: the folder is an input
        inputs, ray_address = (*inputs, ray_address), "local"
    check_runtime_options(runtime, compile_, tile, tile_overlap, device)
    if ray_address is not None:
        if keep or save_maps is not None:
            raise click.UsageError("--keep-images and --save-maps are not available with --ray (yet): run without it")
        if runtime != "torch":
            raise click.UsageError(
                "--runtime with --ray: export the model first (ear-stream export) and pass the export as --model"
            )
        options = dict(
            device=device, dino_weights=dino_weights, tile=tile, tile_overlap=tile_overlap,
            threshold=threshold_override, precision=precision, compile=compile_,
        )  # fmt: skip
        _score_on_ray(list(inputs), model_dir, out_dir, product, ray_address, batch_size, actors, options)
        return
    from ..inspect.scoring import score_files
    from ..io.decode import list_images

    files = list_images(list(inputs))
    if runtime != "torch":
        from ..export.live import runtime_pipeline

        pipe = runtime_pipeline(model_dir, runtime, device, dino_weights, threshold_override, precision)
    else:
        pipe = Pipeline.from_artifact(
            model_dir, device, dino_weights, tile, tile_overlap, threshold_override, precision, compile_
        )
    if pipe.runtime is not None:
        click.echo(f"runtime: {pipe.runtime_name}", err=True)
    if not files:
        raise click.ClickException("no images found in the given inputs")
    keeper = None
    if keep:
        import logging

        from ..io.keeping import ImageKeeper, KeepPolicy

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # the store's warning
        policy = KeepPolicy(keep["keep_images"], keep["keep_passed"], keep["keep_bytes"], keep["keep_days"])
        keeper = ImageKeeper(policy)
    timer.mark("start-up")
    report = score_files(pipe, files, out_dir, product, batch_size, save_maps, keeper=keeper, timer=timer)
    click.echo(f"scored {report.scored} images into {len(report.written)} Parquet part(s) under {out_dir}")
    if timings:
        click.echo(timer.table(report.scored), err=True)
    if keeper is not None:
        usage = keeper.usage
        held = f"; the store holds {usage.objects} ({usage.bytes} bytes)" if usage is not None else ""
        click.echo(f"kept {keeper.kept} original images in {keeper.policy.shown()}{held}")
        if keeper.failed:
            click.secho(f"warning: {keeper.failed} flagged or sampled images could not be kept", fg="yellow", err=True)
    for _path, reason, message in report.rejected:
        click.echo(f"rejected [{reason}] {message}", err=True)
    if report.rejected:
        sys.exit(2)


def _is_ray_address(value: str) -> bool:
    """What ``--ray`` takes as a cluster address: local, auto, ray://…, or host:port (an input such as a folder
    or ``s3://bucket/x`` that follows ``--ray`` is an input)."""
    if value in ("local", "auto") or value.startswith("ray://"):
        return True
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and "/" not in value and not Path(value).exists())


def _score_on_ray(inputs, model_dir, out_dir, product, address, batch_size, actors, options) -> None:  # type: ignore[no-untyped-def]
    """``score --ray``: the Ray Data path (``workers/batch.py``), reported as ``score`` reports."""
    try:
        low, high = (int(x) for x in actors.split(":"))
        if not 1 <= low <= high:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"MIN:MAX with 1 <= MIN <= MAX, got {actors!r}", param_hint="--actors") from None
    from ear_stream_workers.batch import score_on_ray

    report = score_on_ray(
        inputs, model_dir, out_dir, product, address=None if address == "local" else address,
        batch_size=batch_size, actors=(low, high), pipeline_options=options,
    )  # fmt: skip
    skipped = f"; skipped {report.skipped} already in {out_dir}" if report.skipped else ""
    click.echo(f"scored {report.scored} images into {len(report.written)} Parquet part(s) under {out_dir}{skipped}")
    for _path, reason, message in report.rejected:
        click.echo(f"rejected [{reason}] {message}", err=True)
    if report.rejected:
        sys.exit(2)


@click.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--by",
    type=click.Choice(["minute", "hour", "day"]),
    default=None,
    help="Also break every product down over time (processed_at): count, anomaly rate, score p50/p95/max.",
)
def results(results_dir, as_json, by) -> None:
    """Summarise a results tree: rows per product (duplicates by id dropped), anomaly rate, score quantiles.

    \b
      ear-stream results results/ --by hour     # is the anomaly rate or the median score creeping up?
    """
    from ..io.results import read_results, summarize, summarize_over_time

    raw = read_results(results_dir, dedupe=False).num_rows
    table = read_results(results_dir)
    summary = summarize(table)
    summary["raw_rows"] = raw
    summary["duplicates_dropped"] = raw - summary["rows"]
    if by:
        summary["over_time"] = {"by": by, "rows": summarize_over_time(table, by)}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['rows']} unique ids ({summary['duplicates_dropped']} duplicate rows dropped)")
    for product, s in summary["products"].items():
        click.echo(
            f"  {product:<16} n={s['count']:<6} anomalies={s['anomalies']:<5} rate={s['anomaly_rate']:.1%} "
            f"score p50={s['score_p50']:.4f} p95={s['score_p95']:.4f} max={s['score_max']:.4f}"
        )
    if by:
        click.echo(f"by {by}:")
        for r in summary["over_time"]["rows"]:
            click.echo(
                f"  {r['product']:<16} {r['start'][:16]}  n={r['count']:<6} rate={r['anomaly_rate']:.1%} "
                f"p50={r['score_p50']:.4f} p95={r['score_p95']:.4f} max={r['score_max']:.4f}"
            )
