"""The ``ear-stream`` command line (click): one module per verb group, registered on ``main`` here."""

from __future__ import annotations

import click

from .errors import ExpectedErrorsGroup


@click.group(
    cls=ExpectedErrorsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="ear-stream")
def main() -> None:
    """EAR (Excision And Recovery) visual defect detection.

    Train one model per product on good images only, evaluate it on a labelled
    MVTec-AD-layout folder, score image files into Parquet, or run the Redis
    stream workers. Nothing here downloads anything: DINO weights are a local
    file (--dino-weights or EAR_DINO_WEIGHTS).
    """


def _register() -> None:
    from . import batch, bench, demo, dlq, evaluate, export, labels, model, refine, review, stream, threshold

    for command in (
        model.train,
        evaluate.evaluate_cmd,
        model.simulate,
        threshold.threshold,
        batch.score,
        export.export_cmd,
        batch.results,
        review.review,
        stream.push,
        stream.worker,
        stream.status,
        stream.cluster,
        dlq.dlq,
        labels.labels,
        refine.refine,
        refine.promote,
        evaluate.mosaic_search,
        bench.bench,
        model.weights,
        demo.demo,
    ):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
