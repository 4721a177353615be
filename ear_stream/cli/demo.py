"""``ear-stream demo``: the main job end to end on embedded defaults, no data or weights needed.

Local redis-server (loopback, free port) + local Ray + a model trained on a
generated sample; images are pushed to the stream, the Ray actors score them
into Parquet (keeping the flagged images and a sample of the passed ones), the
demo labels some of them, refines and promotes (:mod:`.demo_loop`), and
everything started here is stopped again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from ..model.config import DEFAULT_PRECISION
from .demo_loop import learning_loop
from .options import PRECISION_OPTION

PRODUCT = "synthetic"
#: epochs of the demo model: 86 training images (96 less the hold-out), 440 steps, under a minute on 2 cores.
#: Its recovery error on held-out good images is then 0.23-0.30 of a flat image's on fp32 and bf16, AMX
#: and AVX-512 alike (asserted below half in tests/cli/test_demo.py, under both precisions)
DEMO_EPOCHS = 40
#: the generated sample: 96 good training images hold out 10, enough for the threshold's small-sample tail
#: bound (inspect.thresholds.TAIL_MIN_SCORES) instead of resting on the single highest held-out image (with
#: 48 images, 5 were held out and the demo flagged 8 % of its good images on a CPU with AMX); 48 good and
#: 48 defective test images, so that "at most 5 % of good images flagged" is not decided by one image
DEMO_DATA = {"n_train": 96, "n_test_good": 48, "n_test_defect": 24}
#: the demo's threshold policy: its generated defects score far above its good images (lowest defect 0.47-0.50,
#: highest good 0.15-0.33 over eight trainings), so it allows 0.5 % false rejects, not the line default's 2 %:
#: a threshold in the middle of that gap, not at the good images' edge (benchmarks/demo_precision.py)
DEMO_POLICY = "fpr:0.005"
#: times each of the 96 test images is pushed: 1,152 stream entries, enough that scoring dominates start-up
DEMO_COPIES = 12


def ensure_model(workdir: Path, epochs: int, image_size: int, precision: str = DEFAULT_PRECISION) -> Path:
    """Train the demo model once; later runs reuse it when its config matches."""
    from ..inspect.training import train_model
    from ..io.datasets import write_synthetic_category
    from ..model.artifact import load_manifest
    from ..model.config import ModelConfig, TrainConfig, default_keep_context, resolve_saliency

    data = workdir / "data"
    train = data / PRODUCT / "train" / "good"
    if not train.is_dir() or len(list(train.iterdir())) != DEMO_DATA["n_train"]:  # absent, or an older sample
        shutil.rmtree(data / PRODUCT, ignore_errors=True)
        (workdir / "models" / PRODUCT / "manifest.json").unlink(missing_ok=True)
        write_synthetic_category(data, PRODUCT, **DEMO_DATA)
    model_dir = workdir / "models" / PRODUCT
    saliency = resolve_saliency("auto", has_dino_weights=False)
    if (model_dir / "manifest.json").is_file():
        cfg = load_manifest(model_dir).config  # reused only when it was trained as asked and recovers
        man = load_manifest(model_dir)
        same = (cfg.image_size, cfg.saliency, cfg.keep_context) == (
            image_size,
            saliency,
            default_keep_context(saliency),
        )
        plain = not man.config.head and man.training.get("simulate", 0.0) == 0.0 and man.threshold_policy == DEMO_POLICY
        if same and plain and man.training.get("epochs") == epochs and not man.training.get("degenerate", True):
            click.echo(f"reusing model {model_dir}")
            return model_dir
    cfg = ModelConfig(
        image_size=image_size, saliency=saliency, base_channels=16, keep_context=default_keep_context(saliency)
    )
    return train_model(
        data,
        PRODUCT,
        model_dir,
        cfg,
        # plain training: the demo's 40 epochs (seconds on a CPU) are too few to train a head, and its
        # generated textures need none (the default recipe, simulated defects + head, is for real lines)
        TrainConfig(
            epochs=epochs, batch_size=8, lr=1e-3, precision=precision, simulate=0.0, threshold_policy=DEMO_POLICY
        ),
        mosaic_scale=None,
        device="auto",
    )


def run_demo(
    workdir: Path,
    epochs: int = DEMO_EPOCHS,
    image_size: int = 64,
    copies: int = DEMO_COPIES,
    max_workers: int = 2,
    precision: str = DEFAULT_PRECISION,
) -> dict:
    """Train (or reuse) the demo model, evaluate it offline, then score copies of its test images through
    Redis and the Ray actors; returns the results summary."""
    from ..inspect.pipeline import Pipeline
    from ..io.decode import list_images
    from ..io.results import read_results, summarize
    from ..stream import queue as q
    from ..stream.redis_server import RedisServer, find_redis_server

    find_redis_server()  # before minutes of training, not after
    workdir = Path(workdir).resolve()
    trained = ensure_model(workdir, epochs, image_size, precision)
    # the line's models folder, fresh each run: the learning loop promotes into it, the trained model stays
    line = workdir / "line-models"
    shutil.rmtree(line, ignore_errors=True)
    model_dir = line / PRODUCT
    shutil.copytree(trained, model_dir)
    pipe = Pipeline.from_artifact(model_dir, precision=precision)
    report = offline_stage(workdir, pipe, model_dir)
    out = workdir / "results"
    files = list_images([str(workdir / "data" / PRODUCT / "test")])
    with RedisServer() as server:
        click.echo(f"redis-server on {server.url}")
        scfg = q.StreamConfig(results="ear:out")
        client = q.connect(server.url)
        run_tag = f"{int(time.time())}"
        for c in range(copies):
            for path in files:
                ident = f"{run_tag}/{c}/{path.parent.name}/{path.name}"
                q.push(client, PRODUCT, path.read_bytes(), ident, {"file": path.name}, scfg)
        click.echo(f"pushed {copies * len(files)} images to {scfg.stream}")
        timings = ray_stage(server.url, scfg, model_dir, out, max_workers, precision)
        status = q.stream_status(client, scfg)
    click.echo(
        f"Ray stage: ray start {timings['ray_start']:.1f}s, actor start-up {timings['actor_start']:.1f}s, "
        f"scoring {timings['scoring']:.1f}s (at most {max_workers} actors); dead letters {status['dlq']}, "
        f"pending {status['group'].get('pending')}"
    )
    summary = summarize(read_results(out))
    print_verdicts(read_results(out).select(["id", "is_anomaly"]).to_pylist(), summary)
    summary["learning"] = learning_loop(workdir, model_dir, out, PRODUCT, precision)
    click.echo(f"results: {out}\nreport:  {report}")
    return summary


def offline_stage(workdir: Path, pipe, model_dir: Path) -> Path:  # type: ignore[no-untyped-def]
    """What the model does on its labelled test set (AUROC, HTML report) and how well it recovers."""
    from ..inspect.evaluation import evaluate, write_report
    from ..model.artifact import load_manifest

    recovery = load_manifest(model_dir).training.get("recovery") or {}
    click.secho(
        f"ear-stream demo: saliency {pipe.config.saliency} (--saliency auto without DINO weights), "
        f"m={pipe.config.mosaic_scale}, threshold {pipe.threshold:.4f}",
        fg="yellow",
        err=True,
    )
    result, material = evaluate(pipe, workdir / "data", PRODUCT, progress=False)
    report = write_report(workdir / "report.html", pipe, result, material, "EAR demo: synthetic")
    click.echo(f"offline eval: image AUROC {result.image_auroc:.3f}, pixel AUROC {result.pixel_auroc:.3f}")
    if recovery:
        click.echo(
            f"recovery on held-out good images: error {recovery['recon_error']:.4f} = "
            f"{recovery['ratio_to_flat']:.2f}x a flat image's (the U-Net recovers the texture)"
        )
    return report


def ray_stage(redis_url: str, scfg, model_dir: Path, out: Path, max_workers: int, precision: str) -> dict:  # type: ignore[no-untyped-def]
    """Start a local Ray, let the supervisor start actors for the backlog and drain it; the stage's timings."""
    import ray
    from ear_stream_workers.local import init_ray
    from ear_stream_workers.policy import ScalingPolicy
    from ear_stream_workers.supervisor import Supervisor

    from ..stream.settings import WorkerConfig

    t_ray = time.monotonic()
    init_ray(num_cpus=max(2, max_workers))
    timings = {"ray_start": time.monotonic() - t_ray}
    try:
        template = WorkerConfig(
            redis_url=redis_url,
            models_dir=model_dir.parent,
            out_dir=out,
            stream=scfg,
            batch_size=16,
            flush_rows=64,
            flush_seconds=0.5,
            block_ms=200,
            precision=precision,
            # the loop's second pass learns from what the line kept: every flagged image and a tenth of the rest
            keep_images=str(out.parent / "kept"),
            keep_passed=0.1,
        )
        policy = ScalingPolicy(min_workers=1, max_workers=max_workers, high_watermark=32, scale_up_cooldown_s=0)
        sup = Supervisor(template, policy, poll_s=0.2)
        t_actors = time.monotonic()
        try:
            sup.step()  # the backlog asks for actors at once
            ray.get([slot.handle.ping.remote() for slot in sup.slots.values()], timeout=300)
            timings["actor_start"] = time.monotonic() - t_actors
            t_scoring = time.monotonic()
            sup.run(until=sup.drained, max_seconds=600)
            timings["scoring"] = time.monotonic() - t_scoring
        finally:
            sup.shutdown()
    finally:
        ray.shutdown()
    return timings


def print_verdicts(rows: list[dict], summary: dict) -> None:
    """How many defective and good images were flagged (ids are run/copy/<defect>/<file>), per product."""
    bad = [r["is_anomaly"] for r in rows if "/good/" not in r["id"]]
    good = [r["is_anomaly"] for r in rows if "/good/" in r["id"]]
    click.echo(
        f"verdicts: {sum(bad)}/{len(bad)} defective images flagged ({sum(bad) / max(1, len(bad)):.0%}), "
        f"{sum(good)}/{len(good)} good images flagged ({sum(good) / max(1, len(good)):.0%})"
    )
    for product, s in summary["products"].items():
        click.echo(
            f"{product}: {s['count']} unique ids, {s['anomalies']} flagged ({s['anomaly_rate']:.1%}), "
            f"score p50 {s['score_p50']:.4f} p95 {s['score_p95']:.4f}"
        )


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Where the generated data, model and results go.",
)
@click.option(
    "--epochs",
    default=DEMO_EPOCHS,
    show_default=True,
    help="Training epochs for the demo model (enough that it recovers its textures: under half a flat image's error).",
)
@click.option("--image-size", default=64, show_default=True, help="Side of the demo model (a multiple of 32).")
@click.option(
    "--copies",
    default=DEMO_COPIES,
    show_default=True,
    help="Times each test image is pushed (with distinct ids): enough work that scoring, not actor start-up, dominates.",
)
@click.option("--workers", "n_workers", default=2, show_default=True, help="Most Ray actors.")
@PRECISION_OPTION
def demo(workdir, epochs, image_size, copies, n_workers, precision) -> None:
    """Run the main job on embedded defaults.

    Starts a local redis-server and a local Ray, trains (or reuses) a small model on
    a generated sample, pushes the test images, lets the Ray actors score them into
    Parquet, prints the summary and the HTML report's path, and shuts everything down.
    """
    run_demo(workdir, epochs=epochs, image_size=image_size, copies=copies, max_workers=n_workers, precision=precision)
