"""The bench verb: run a benchmark script from benchmarks/."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("which", type=click.Choice(["ops", "worker", "saliency", "study"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(which, args) -> None:
    """Run a benchmark script from benchmarks/ (ops, worker, saliency or study); ARGS go to the script (try ARGS = --help)."""
    import runpy

    script = (
        Path(__file__).resolve().parents[2] / "benchmarks" / f"{'study' if which == 'study' else 'bench_' + which}.py"
    )
    if not script.is_file():
        raise click.ClickException(f"{script} not found: benchmarks ship with the source checkout")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")
