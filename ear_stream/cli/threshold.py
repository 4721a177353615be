"""The ``threshold`` verb: choose a model's decision thresholds by a named policy, without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from ..errors import ConfigError
from ..model.config import DEFAULT_IMAGE_POLICY, DEFAULT_PIXEL_POLICY
from ..review.config import login_name
from .options import DEVICE_OPTION

if TYPE_CHECKING:  # the policy registry imports numpy: read when a policy is parsed or help is shown
    from ..inspect.threshold_policies import Scope


class PolicyType(click.ParamType):
    """A threshold policy (``fpr:0.02``), refused at parse time unless the registry accepts it for ``scope``
    (``labelled=False``: training, which has no labelled items). The text is passed on as written."""

    name = "policy"

    def __init__(self, scope: Scope = "image", labelled: bool = True) -> None:
        self.scope, self.labelled = scope, labelled

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..inspect.threshold_policies import parse_policy

        try:
            parse_policy(str(value), pixel=self.scope == "pixel", labelled=self.labelled)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        from ..inspect.threshold_policies import policy_names

        return [CompletionItem(n) for n in policy_names(self.scope, self.labelled) if n.startswith(incomplete)]


class PolicyOption(click.Option):
    """An option taking a threshold policy (type :class:`PolicyType`) whose help lists the registered
    policies of its scope: ``intro``, the list, ``outro``. The list is read when the help is, so the
    registry (and numpy) is imported only by a verb that shows or parses a policy."""

    def __init__(
        self, *args: Any, scope: Scope = "image", labelled: bool = True, intro: str = "", outro: str = "", **kw: Any
    ) -> None:
        kw.setdefault("type", PolicyType(scope, labelled))
        super().__init__(*args, **kw)
        self.scope, self.labelled, self.intro, self.outro = scope, labelled, intro, outro

    @property
    def help(self) -> str:
        from ..inspect.threshold_policies import policy_help

        return f"{self.intro}{policy_help(self.scope, self.labelled)}.{self.outro}"

    @help.setter
    def help(self, value: str | None) -> None:
        """click stores the help it was given: the registry's list replaces it, so there is nothing to keep."""


@click.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--policy",
    cls=PolicyOption,
    default=None,
    intro="Image threshold: ",
    outro=f" Training applies {DEFAULT_IMAGE_POLICY}; default: keep the current one.",
)
@click.option(
    "--pixel-policy",
    cls=PolicyOption,
    scope="pixel",
    default=None,
    intro="Which map pixels form defect regions: ",
    outro=f" Training applies {DEFAULT_PIXEL_POLICY}; default: keep the current one.",
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Dataset root: rescores held-out good images for models that did not keep their scores, and with "
    "--category scores the labelled validation set the f1 policy needs.",
)
@click.option("--category", default=None, help="Labelled category under --data (test/<defect>/) for f1.")
@click.option(
    "--labels",
    "labels_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Labels people gave in `ear-stream review`: f1 then uses the reviewed items judged by this model's "
    "weights (their stored scores; no dataset, no rescoring).",
)
@click.option(
    "--min-labels",
    type=int,
    default=None,
    help="With --labels: reviewed labels of each class (defects, good parts) the f1 policy needs. "
    "Default: the one --show prints.",
)
@click.option(
    "--rollback",
    is_flag=True,
    help="Restore the thresholds in force before the current ones, as a new revision (history kept; "
    "repeat to go further back).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Apply a threshold that rejects more of the held-out good images than the bound allows "
    "(or that cannot be checked: no held-out scores stored).",
)
@click.option("--reviewer", default=None, help="Who makes the change, kept in the history. Default: the login name.")
@click.option("--show", is_flag=True, help="Print the current thresholds and their history; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@DEVICE_OPTION
def threshold(
    model_dir,
    policy,
    pixel_policy,
    data_root,
    category,
    labels_dir,
    min_labels,
    rollback,
    force,
    reviewer,
    show,
    as_json,
    device,
) -> None:
    """Recompute MODEL_DIR's thresholds from its stored calibration scores and rewrite its manifest atomically.

    The previous thresholds go to the manifest's threshold_history with a
    timestamp and who changed them, and model_version becomes
    <weights hash>.t<revision>, so results show which revision judged them.
    Running workers pick the change up within a few seconds, without a restart.
    A threshold that rejects more of the model's held-out good images than the
    bound (see --show) is refused unless --force.

    \b
      ear-stream threshold models/tile --policy fpr:0.01          # at most 1 % false rejects
      ear-stream threshold models/tile --policy f1 --data DATA --category tile
      ear-stream threshold models/tile --policy f1 --labels results-labels   # from reviewed rejects
      ear-stream threshold models/tile --pixel-policy quantile:0.999
      ear-stream threshold models/tile --rollback                 # back to the previous revision
    """
    from ..inspect import thresholds

    who = reviewer or login_name()
    if rollback:
        if policy is not None or pixel_policy is not None:
            raise click.UsageError("--rollback restores earlier thresholds: give it no --policy/--pixel-policy")
        report = _refusing(thresholds.rollback, model_dir, force=force, reviewer=who)
        click.echo(json.dumps(report, indent=2) if as_json else _rolled_back(report))
        return
    if show or (policy is None and pixel_policy is None):
        info = _info(model_dir, thresholds.MAX_HELD_OUT_FRR, thresholds.MIN_LABELS_PER_CLASS)
        click.echo(json.dumps(info, indent=2) if as_json else _describe(info))
        return
    report = _refusing(
        thresholds.revise,
        model_dir,
        policy,
        pixel_policy,
        data_root,
        category,
        device,
        labels_dir,
        min_labels=min_labels,
        force=force,
        reviewer=who,
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    prev = report["previous"]
    click.echo(
        f"threshold {prev['threshold']:.6g} ({prev['policy']}) -> {report['threshold']:.6g} ({report['policy']}); "
        f"pixel threshold {report['pixel_threshold']:.6g} ({report['pixel_policy']}); "
        f"model_version {report['model_version']}"
    )
    frr = report["false_reject_rate_on_calibration"]
    click.echo(f"false-reject rate on the held-out good images: {frr:.1%}" + (" (forced)" if report["forced"] else ""))
    if "operating_point" in report:
        before, after = report["operating_point_before"], report["operating_point"]
        where = "the reviewed items" if report["labelled_from"] == "review" else "the validation set"
        click.echo(
            f"F1 {report['f1']:.3f} on {where} ({after['items']}): escapes {before['escapes']} -> {after['escapes']}, "
            f"false alarms {before['false_alarms']} -> {after['false_alarms']}"
        )


def _refusing(action, *args, **kwargs) -> dict:
    """``action``'s report; a refusal says what overrides it."""
    from ..inspect.thresholds import Refused

    try:
        return action(*args, **kwargs)
    except Refused as exc:
        if not exc.forceable:
            raise
        raise Refused(f"{exc} (--force applies it anyway)", forceable=True) from None


def _info(model_dir: Path, bound: float, min_labels: int) -> dict:
    from ..model.artifact import load_manifest

    m = load_manifest(model_dir)
    return {
        "threshold": m.threshold,
        "policy": m.threshold_policy,
        "pixel_threshold": m.pixel_threshold,
        "pixel_policy": m.pixel_policy,
        "model_version": m.model_version,
        "revision": m.threshold_revision,
        "max_false_reject_rate_on_calibration": bound,
        "min_labels_per_class": min_labels,
        "history": m.threshold_history,
    }


def _describe(info: dict) -> str:
    pixel = "= image" if info["pixel_policy"] == "image" else f"{info['pixel_threshold']:.6g}"
    lines = [
        f"threshold {info['threshold']:.6g} ({info['policy']}), pixel threshold {pixel} ({info['pixel_policy']}), "
        f"model_version {info['model_version']} (revision {info['revision']}); a new threshold may reject at most "
        f"{info['max_false_reject_rate_on_calibration']:.0%} of the held-out good images without --force; "
        f"f1 from reviewed labels needs {info['min_labels_per_class']} of each class"
    ]
    for h in info["history"]:
        how = f"rolled back to revision {h['rollback_to']}" if "rollback_to" in h else h.get("policy_applied", "")
        who = f" by {h['reviewer']}" if h.get("reviewer") else ""
        lines.append(
            f"  revision {h.get('revision')}: {h.get('threshold')} ({h.get('threshold_policy')}) "
            f"until {h.get('replaced_at')}" + (f", replaced ({how}){who}" if how or who else "")
        )
    return "\n".join(lines)


def _rolled_back(report: dict) -> str:
    prev = report["previous"]
    return (
        f"threshold {prev['threshold']:.6g} ({prev['policy']}) -> {report['threshold']:.6g} ({report['policy']}), "
        f"the thresholds of revision {report['restored_revision']}; model_version {report['model_version']}; "
        f"false-reject rate on the held-out good images: {report['false_reject_rate_on_calibration']:.1%}"
    )
