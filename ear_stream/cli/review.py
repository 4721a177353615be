"""The ``review`` verb: serve the review station (docs/design.md, "Review station")."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from ..review.config import ReviewConfig, is_loopback
from .options import default_of


@click.command()
@click.option(
    "--results",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Results tree written by `worker`, `cluster` or `score`.",
)
@click.option(
    "--models",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="MODELS_DIR (<product>/manifest.json): shows the thresholds in force and lets the page apply a new one "
    "(atomically, history kept; running workers pick it up).",
)
@click.option(
    "--labels",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where labels are written (Parquet). Default: RESULTS-labels next to the results tree.",
)
@click.option(
    "--images",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder the original images may be served from (repeatable): ids that are paths under it, "
    "<folder>/<id> or <folder>/<product>/<id>. Without one, the page shows the heatmap column alone.",
)
@click.option(
    "--image-store",
    "image_stores",
    multiple=True,
    help="Where the line kept its images (its --keep-images: a folder or URI; repeatable): a row's image_uri is "
    "read from here by its key, e.g. from a copy of the store. Default: the store the row's image_uri names.",
)
@click.option("--redis", "redis_url", default=None, help="Redis URL: show the input queue's status on the page.")
@click.option(
    "--host",
    default=default_of(ReviewConfig, "host"),
    show_default=True,
    help="Address to listen on. Anything but loopback exposes the station: it then needs --token.",
)
@click.option("--port", type=int, default=default_of(ReviewConfig, "port"), show_default=True, help="TCP port.")
@click.option(
    "--token",
    envvar="EAR_REVIEW_TOKEN",
    default=None,
    help="Secret every request must carry (once per browser: ?token=… sets a cookie). Generated and printed "
    "when --host is not loopback and none is given. Env: EAR_REVIEW_TOKEN.",
)
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    help="Another name the station is reached under (repeatable), e.g. this machine's DNS name behind "
    "--host 0.0.0.0. Requests with any other Host header are refused (no DNS rebinding).",
)
@click.option(
    "--min-labels",
    type=int,
    default=None,
    help="Labels of each class (defects, good parts) judged by the current weights before Apply may change a "
    "threshold. Default: the one `ear-stream threshold MODEL --show` prints.",
)
@click.option(
    "--passed-sample",
    type=float,
    default=default_of(ReviewConfig, "passed_sample"),
    show_default=True,
    help="Share of passed items queued after the flagged ones, to find escapes (a stable per-item draw).",
)
@click.option("--reviewer", default=None, help="Name stored with every label. Default: the login name.")
def review(
    results,
    models,
    labels,
    images,
    image_stores,
    redis_url,
    host,
    port,
    token,
    allowed_hosts,
    min_labels,
    passed_sample,
    reviewer,
) -> None:
    """Serve a local web page to confirm or overrule what the line flagged.

    Per product: the flagged items (and a sample of passed ones, for escapes) with
    the input (the image the line kept, else one from --images), the heatmap overlay and the region boxes. Keys: D = defect,
    F = good part (a false alarm when it was flagged), S = skip. Labels are
    appended as Parquet (who, when, model version), one atomic file per decision,
    the latest per (product, id) counting. The page shows what the current
    threshold does on the reviewed items and the F1-optimal one; with --models it
    can apply it — the same path as `ear-stream threshold MODEL --policy f1 --labels DIR`:
    Apply shows the proposal (false rejects and escapes on the reviewed items, the
    share of held-out good images it rejects) and asks to confirm; it refuses with
    fewer than --min-labels labels of each class, or a threshold that rejects more
    of the held-out good images than `threshold` allows without --force. Only the
    station's own pages can change anything (Host, Origin, JSON and a CSRF token
    are checked).

    \b
      ear-stream review --results out/ --models models/ --images /data/line3
      ear-stream review --results out/ --host 0.0.0.0 --token "$SECRET"   # reachable from the network
    """
    import uvicorn

    from ..review.app import create_app

    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(18)
    cfg = ReviewConfig(
        results=results,
        labels=labels,
        models=models,
        images=tuple(images),
        image_stores=tuple(image_stores),
        redis_url=redis_url,
        host=host,
        port=port,
        token=token,
        allowed_hosts=tuple(allowed_hosts),
        min_labels_per_class=min_labels,
        passed_sample=passed_sample,
        reviewer=reviewer,
    )
    shown = "localhost" if is_loopback(host) else host
    click.echo(f"review station: http://{shown}:{port}/" + (f"?token={token}" if token else ""))
    click.echo(f"labels go to {cfg.labels}")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning")
