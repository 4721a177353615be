"""The demo's second pass: learning from the line (docs/design.md, "Learning from the line").

After the Ray stage the demo plays the quality engineer: it labels some flagged and some passed items whose
images the line kept with what it knows they are (the generated sample's ground truth), refines the model
on them (``ear-stream refine``'s :func:`~ear_stream.inspect.refine.refine_model`, from the kept images through
the results), asks ``promote``'s check, promotes when allowed, and prints escapes and false rejects of the
model before and after on the sample's test images (the labelled ones among them: a demo, not a study).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

#: items the demo labels: this many flagged and this many passed (of those whose image was kept), so that the
#: held-out share (30 %) holds the 3 defects and 3 goods a comparison needs
DEMO_LABELS_EACH = 20
#: the demo refinement's budget (CPU minutes): seconds of the demo's small model
DEMO_REFINE_MINUTES = 0.5
#: the candidate's threshold policy: F1 on the labelled items. The demo model's own ``fpr:0.005`` rests on 10
#: held-out good images, below 1/0.005, so it is the log-normal tail bound of their scores; the refined model's
#: good scores spread wider (some far lower), which lifts that bound above every defect (measured 0.98)
DEMO_REFINE_POLICY = "f1"


def learning_loop(workdir: Path, model_dir: Path, results: Path, product: str, precision: str) -> dict:
    """Label → refine → promote → before/after; returns the figures (``before``, ``after``, ``promoted``)."""
    from ..errors import ConfigError
    from ..inspect.labelled import LabelledSet
    from ..inspect.promotion import check_candidate
    from ..inspect.refine import refine_model
    from ..io.label_images import LabelImages
    from ..io.labels import Label, LabelStore
    from ..io.results import read_results
    from ..model.artifact import load_manifest
    from ..model.config import RefineConfig
    from ..model.deployment import candidate_dir, promote

    rows = [r for r in read_results(results).to_pylist() if r["image_uri"]]
    pick: dict[str, dict] = {}
    seen: set[str] = set()
    for flagged in (True, False):  # one label per distinct image: copies of one file are one item
        taken = 0
        for r in rows:
            if r["is_anomaly"] == flagged and r["image_uri"] not in seen and taken < DEMO_LABELS_EACH:
                pick[r["id"]], taken = r, taken + 1
                seen.add(r["image_uri"])
    labels_dir = workdir / "labels"
    shutil.rmtree(labels_dir, ignore_errors=True)  # this run's decisions only
    truth = {ident: "good" if "/good/" in ident else "defect" for ident in pick}
    judged = [(i, r, truth[i]) for i, r in pick.items()]
    LabelStore(labels_dir).add_many(
        [
            Label(product, i, t, r["is_anomaly"], r["score"], r["threshold"], r["model_version"], "demo")
            for i, r, t in judged
        ]
    )
    n_def = sum(v == "defect" for v in truth.values())
    click.echo(f"labelled {n_def} confirmed defects and {len(truth) - n_def} confirmed goods from the kept images")
    labelled = LabelledSet.load(
        LabelStore(labels_dir), product, LabelImages(None, results, product), load_manifest(model_dir).config.image_size,
        RefineConfig(threshold_policy=DEMO_REFINE_POLICY).holdout,
    )  # fmt: skip
    before = _rates(model_dir, workdir, product, precision)
    out = candidate_dir(model_dir.parent, product)
    refine_model(model_dir, labelled, workdir / "data", product, out, RefineConfig(threshold_policy=DEMO_REFINE_POLICY), precision,
                 progress=False, max_minutes=DEMO_REFINE_MINUTES)  # fmt: skip
    try:
        promote(model_dir.parent, product, out, lambda staged: check_candidate(model_dir.parent, product, staged))
        promoted, why = True, ""
    except ConfigError as exc:
        promoted, why = False, str(exc)
    after = _rates(model_dir, workdir, product, precision) if promoted else before
    click.echo(
        f"learning from the line: escapes {before['escapes']:.1%} -> {after['escapes']:.1%}, false rejects "
        f"{before['false_rejects']:.1%} -> {after['false_rejects']:.1%} on the sample's test images (the labelled ones among them) "
        + ("(candidate promoted)" if promoted else f"(candidate not promoted: {why})")
    )
    return {"before": before, "after": after, "promoted": promoted}


def _rates(model_dir: Path, workdir: Path, product: str, precision: str) -> dict:
    """Escapes and false rejects of a model at its own threshold on the generated sample's test images."""
    import numpy as np

    from ..inspect.inputs import load_images
    from ..inspect.pipeline import Pipeline
    from ..io.datasets import test_samples

    pipe = Pipeline.from_artifact(model_dir, precision=precision)
    samples = test_samples(workdir / "data", product)
    scores, _ = pipe.score_batches(load_images(pipe.config, [s.path for s in samples], progress=False))
    labels = np.array([s.defect != "good" for s in samples])
    flagged = np.asarray(scores) > pipe.threshold
    return {"escapes": float((~flagged[labels]).mean()), "false_rejects": float(flagged[~labels].mean())}
