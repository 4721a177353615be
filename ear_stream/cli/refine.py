"""Learning from the line: ``refine`` (a candidate from the promoted model and the line's labels) and
``promote`` (the candidate becomes what the line runs, only when the held-out labels say it is no worse).

The work is :mod:`ear_stream.inspect.refine` (training), :mod:`ear_stream.inspect.promotion` (the decision)
and :mod:`ear_stream.model.deployment` (the models folder's layout, the atomic swap).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from ..model.config import REFINE_MINUTES, RefineConfig
from ..model.deployment import CANDIDATES, VERSIONS, candidate_dir, product_of
from .options import DEVICE_OPTION, DINO_OPTION, PRECISION_OPTION, announce_backend, default_of
from .threshold import PolicyOption


@click.command()
@click.argument("model_dir", metavar="MODEL", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_dir", required=True, type=click.Path(path_type=Path),
              help="The label store the review station and `labels import` write.")  # fmt: skip
@click.option(
    "--images",
    default=None,
    help="Where the labelled images are: a folder or pyarrow URI whose relative paths are the labels' ids "
    "(labels imported from a CSV), or, with --results, a copy of the line's kept-image store.",
)
@click.option(
    "--results",
    default=None,
    help="The line's results: each label's id is found there and its kept image (image_uri) read, from "
    "--images when given, else from the store the URI names.",
)
@click.option("--product", default=None, help="Product whose labels to learn from. Default: MODEL's folder name.")
@click.option("--data", "data_root", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="DATA_ROOT with CATEGORY/train/good, the good images. Default: the parent's, as recorded.")  # fmt: skip
@click.option("--category", default=None, help="Category under --data. Default: the parent's.")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help=f"Candidate directory. Default: MODELS/{CANDIDATES}/<product> (where promote and --shadow look).")  # fmt: skip
@click.option("--max-minutes", type=float, default=REFINE_MINUTES, show_default=True,
              help="CPU-minute budget of this process (one core's minutes, whatever else the machine runs).")  # fmt: skip
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (quick trials).")
@click.option("--lr", default=default_of(RefineConfig, "lr"), show_default=True, help="Adam learning rate.")
@click.option(
    "--holdout",
    default=default_of(RefineConfig, "holdout"),
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of the labels held out (by hash of product and id) to compare parent and candidate.",
)
@click.option(
    "--bank-share",
    default=default_of(RefineConfig, "bank_share"),
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of simulated defects replaced by a confirmed defect pasted onto a good image.",
)
@click.option(
    "--threshold-policy",
    cls=PolicyOption,
    default=None,
    intro="Candidate's image threshold, on the held-out and confirmed goods (and the training side's labelled "
    "items for f1): ",
    outro=" Default: the parent's policy.",
)
@click.option("--resume", is_flag=True, help="Continue a killed refinement from OUT/checkpoint.pt.")
@click.option("--checkpoint-minutes", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Write OUT/checkpoint.pt every this many CPU minutes (what --resume continues from).")  # fmt: skip
@PRECISION_OPTION
@DEVICE_OPTION
@DINO_OPTION
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def refine(
    model_dir: Path,
    labels_dir: Path,
    images: str | None,
    results: str | None,
    product: str | None,
    data_root: Path | None,
    category: str | None,
    out_dir: Path | None,
    max_minutes: float,
    max_steps: int | None,
    lr: float,
    holdout: float,
    bank_share: float,
    threshold_policy: str | None,
    resume: bool,
    checkpoint_minutes: float,
    precision: str,
    device: str,
    dino_weights: Path | None,
    progress: bool,
) -> None:
    """Refine the promoted MODEL on the line's labels into a candidate.

    Warm-starts from MODEL and trains on its good images with simulated defects, confirmed goods (false
    alarms are hard negatives), and confirmed defects: image labels through a multiple-instance loss on the
    head's map, brushed masks as pixel targets, and their pixels pasted onto good images beside the
    simulated defects. A share of the labels is held out; parent and candidate are scored on it, and the
    figures are stored in the candidate's manifest with its lineage. The candidate scores nothing until
    `ear-stream promote`.

    \b
    ear-stream refine models/tile --labels labels --results results        # the line's kept images
    ear-stream refine models/tile --labels labels --images /data/tile       # labels from a CSV import
    ear-stream promote tile --models models
    """
    from ..inspect.labelled import LabelledSet
    from ..inspect.refine import refine_model
    from ..io.label_images import LabelImages
    from ..io.labels import LabelStore, check_product
    from ..model.artifact import load_manifest

    announce_backend(precision, device)
    parent = load_manifest(model_dir)
    models, name = product_of(model_dir)
    product = check_product(product or name)
    data_root = data_root or _recorded(parent.training, "data_root", "--data")
    category = category or _recorded(parent.training, "category", "--category")
    out = out_dir or candidate_dir(models, name)
    cfg = RefineConfig(lr=lr, holdout=holdout, bank_share=bank_share, threshold_policy=threshold_policy)
    source = LabelImages(images, results, product)
    labelled = LabelledSet.load(LabelStore(labels_dir), product, source, parent.config.image_size, holdout)
    counts = labelled.counts()
    click.echo(
        f"{product}: {counts['defect']} confirmed defects ({counts['with_mask']} with a mask), {counts['good']} "
        f"confirmed goods; {counts['held_out_defect']}+{counts['held_out_good']} held out"
        + (
            f"; {len(labelled.skipped)} left out (first: {next(iter(labelled.skipped.items()))})"
            if labelled.skipped
            else ""
        )
    )
    path = refine_model(model_dir, labelled, data_root, category, out, cfg, precision, dino_weights, device,
                        progress, max_minutes, max_steps, resume=resume, checkpoint_minutes=checkpoint_minutes)  # fmt: skip
    _report(path)


def _recorded(training: dict, key: str, option: str) -> str:
    value = training.get(key)
    if not value:
        raise ConfigError(f"the parent's manifest does not record its {key}: pass {option}")
    return str(value)


def _report(candidate: Path) -> None:
    from ..inspect.promotion import figures_of
    from ..model.artifact import load_manifest

    manifest = load_manifest(candidate)
    held = manifest.lineage["heldout"]
    click.echo(f"candidate {manifest.model_version} written to {candidate}")
    click.echo(f"  held-out labels, parent:    {figures_of(held['parent']).describe()}")
    click.echo(f"  held-out labels, candidate: {figures_of(held['candidate']).describe()}")
    if held["refusal"]:
        click.echo(f"  not promotable: {held['refusal']}")
    else:
        click.echo("  promotable: `ear-stream promote` makes it the line's model")


@click.command()
@click.argument("product")
@click.option(
    "--models",
    "models_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The workers' models folder (MODELS/<product>/).",
)
@click.option("--candidate", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help=f"The candidate to promote. Default: MODELS/{CANDIDATES}/PRODUCT.")  # fmt: skip
@click.option("--rollback", is_flag=True,
              help=f"Return to a version the line ran before (--candidate MODELS/{VERSIONS}/PRODUCT/<version>), "
              "without a held-out comparison: a person's decision.")  # fmt: skip
def promote(product: str, models_dir: Path, candidate: Path | None, rollback: bool) -> None:
    """Make PRODUCT's refined candidate the model the line runs (atomically; workers hot-reload it).

    Refused, with the figures, when the candidate was not refined from the model the line runs now, or when on
    its held-out labels it ranks worse (image AUROC), passes more defects, or makes more mistakes (escapes +
    false rejects, each model at its own threshold) than its parent, or when the held-out labels cannot show it
    (fewer than 3 defects or 3 good items among them). The figures are recomputed from the held-out scores
    refine stored, at the threshold the parent runs with now. Every promoted model stays under MODELS/.versions/PRODUCT/ (`--rollback --candidate
    MODELS/.versions/PRODUCT/<version>` returns to one).

    \b
    ear-stream promote tile --models models
    ear-stream promote tile --models models --rollback --candidate models/.versions/tile/<version>
    """
    from ..inspect.promotion import check_candidate
    from ..io.labels import check_product
    from ..model.deployment import promote as swap

    check_product(product)
    candidate = candidate or candidate_dir(models_dir, product)
    if not candidate.is_dir():
        raise ConfigError(f"no candidate for {product} at {candidate}: run `ear-stream refine` first")
    if rollback and candidate == candidate_dir(models_dir, product):
        raise ConfigError(f"--rollback needs --candidate MODELS/{VERSIONS}/{product}/<version>")
    if rollback:  # where it comes from is checked on the original path; the rest on the copy
        check_candidate(models_dir, product, candidate, rollback=True)
    manifest, target = swap(
        models_dir, product, candidate, lambda staged: check_candidate(models_dir, product, staged, rollback=rollback)
    )
    click.echo(f"{product} now runs {manifest.model_version} ({target}); workers reload it within seconds")
