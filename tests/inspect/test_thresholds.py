"""Threshold policies, the threshold verb with its history, hot reload in workers, per-run overrides."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from ear_stream.cli import main
from ear_stream.errors import ConfigError
from ear_stream.inspect import threshold_policies
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.threshold_policies import (
    SCOPES,
    ThresholdPolicy,
    policy_class,
    policy_help,
    policy_names,
    register_policy,
)
from ear_stream.inspect.threshold_stats import TAIL_MIN_SCORES, tail_bound
from ear_stream.inspect.thresholds import (
    image_threshold,
    lowest_threshold_with_frr,
    parse_policy,
    pixel_quantile_grid,
    pixel_threshold,
)
from ear_stream.model.artifact import load_manifest
from ear_stream.model.config import DEFAULT_IMAGE_POLICY, DEFAULT_PIXEL_POLICY
from ear_stream.stream.worker import ModelRegistry

GOOD = np.array([0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00])
ROOT = Path(__file__).resolve().parents[2]


def test_policies_by_hand():
    assert image_threshold(parse_policy("sigma:0"), GOOD) == pytest.approx(1.0)  # never below the max
    assert image_threshold(parse_policy("sigma:3"), GOOD) == pytest.approx(0.55 + 3 * GOOD.std())
    assert image_threshold(parse_policy("quantile:0.5"), GOOD) == pytest.approx(0.55)
    # at most 10 % of 10 good images above the threshold: one may be rejected → t = 0.9
    assert image_threshold(parse_policy("fpr:0.1"), GOOD) == pytest.approx(0.9)
    assert (GOOD > 0.9).mean() <= 0.1 and (GOOD > 0.8).mean() > 0.1  # and 0.9 is the lowest such
    assert lowest_threshold_with_frr(GOOD, 0.0) == pytest.approx(1.0)
    assert image_threshold(parse_policy("manual:0.42"), GOOD) == 0.42
    labels = np.array([False, False, True, True])
    assert 0.2 < image_threshold(parse_policy("f1"), GOOD, (np.array([0.1, 0.2, 0.7, 0.9]), labels)) < 0.7
    with pytest.raises(ValueError, match="labelled validation set"):
        image_threshold(parse_policy("f1"), GOOD)


@pytest.mark.parametrize("bad", ["sigmas:3", "fpr:2", "quantile:x", "f1:3", "image", "sigma:-1", ""])
def test_bad_policies_are_refused_clearly(bad):
    with pytest.raises(ValueError, match=r"policy|must|number|takes no value"):
        parse_policy(bad)


def test_pixel_policies():
    calib = {"pixel_quantiles": pixel_quantile_grid(np.linspace(0, 1, 10001)), "pixel_mean": 0.5, "pixel_std": 0.1}
    assert pixel_threshold(parse_policy("image", pixel=True), 0.7, calib) == 0.7
    assert pixel_threshold(parse_policy("quantile:0.99", pixel=True), 0.7, calib) == pytest.approx(0.99, abs=1e-3)
    assert pixel_threshold(parse_policy("fpr:0.05", pixel=True), 0.7, calib) == pytest.approx(0.95, abs=1e-3)
    assert pixel_threshold(parse_policy("sigma:2", pixel=True), 0.7, calib) == pytest.approx(0.7)


def test_fpr_backs_a_small_set_with_the_log_normal_tail_bound():
    """⌊F·n⌋ = 0 from TAIL_MIN_SCORES scores on: the larger of the maximum and the tolerance bound; fewer: the max."""
    rng = np.random.default_rng(0)
    small = np.exp(rng.normal(size=TAIL_MIN_SCORES))
    bounded = image_threshold(parse_policy("fpr:0.02"), small)
    assert bounded == max(small.max(), tail_bound(small, 0.02)) and bounded > small.max()
    assert image_threshold(parse_policy("fpr:0.02"), small[:-1]) == small[:-1].max()  # too few to fit a spread
    fifty = np.exp(rng.normal(size=50))  # ⌊0.02·50⌋ = 1: one may lie above, the order statistic decides
    assert image_threshold(parse_policy("fpr:0.02"), fifty) == np.sort(fifty)[-2]


def test_the_registry_is_the_one_list_of_policies():
    assert policy_names("image") == ("sigma", "quantile", "fpr", "f1", "simf1", "manual")
    assert policy_names("pixel") == ("image", "sigma", "quantile", "fpr", "manual")
    assert "f1" not in policy_names("image", labelled=False)  # training has no labelled items
    parse_policy(DEFAULT_IMAGE_POLICY, labelled=False)  # the defaults are registered policies training can use
    parse_policy(DEFAULT_PIXEL_POLICY, pixel=True)
    for scope in SCOPES:
        for name in policy_names(scope):
            cls = policy_class(name)
            text = cls.usage().replace(f":{cls.param}", f":{cls.example}")
            policy = parse_policy(text, pixel=scope == "pixel")
            assert type(policy) is cls and parse_policy(str(policy), pixel=scope == "pixel") == policy
            assert f"{cls.usage()} ({cls.summary[scope]})" in policy_help(scope)
    assert str(parse_policy("fpr:0.020")) == "fpr:0.02" and parse_policy("sigma:3").kind == "sigma"
    with pytest.raises(ConfigError, match="needs labelled items, which training does not have"):
        parse_policy("f1", labelled=False)


def test_a_new_policy_is_one_class(monkeypatch):
    monkeypatch.setattr(threshold_policies, "_POLICIES", dict(threshold_policies._POLICIES))

    @register_policy
    class Median(ThresholdPolicy):
        """The median plus T."""

        name = "median"
        param = "T"
        example = "0.1"
        summary: ClassVar[dict[str, str]] = {"image": "median + T of the held-out good scores"}

        def image_threshold(self, good: np.ndarray, labelled: Any = None, simulated: Any = None) -> float:
            return float(np.median(self.held_out(good)) + self.number)

    assert image_threshold(parse_policy("median:0.1"), GOOD) == pytest.approx(0.65)
    assert "median:T (median + T" in policy_help("image") and "median" not in policy_names("pixel")
    with pytest.raises(ConfigError, match="unknown threshold policy"):
        parse_policy("median:0.1", pixel=True)
    with pytest.raises(ValueError, match="new name"):
        register_policy(Median)


def test_the_cli_lists_and_checks_the_registered_policies():
    runner = CliRunner()
    shown = " ".join(runner.invoke(main, ["threshold", "--help"], terminal_width=1000).output.split())
    for scope in SCOPES:
        assert policy_help(scope) in shown
    res = runner.invoke(main, ["threshold", str(ROOT), "--policy", "sigmas:3"])
    assert res.exit_code == 2 and "unknown threshold policy 'sigmas:3': use one of sigma, quantile" in res.output
    res = runner.invoke(main, ["threshold", str(ROOT), "--pixel-policy", "f1"])
    assert res.exit_code == 2 and "use one of image, sigma" in res.output


def test_the_docs_name_every_policy_and_no_other():
    """README's policy table and pixel-policy list and docs/design.md's Thresholds section follow the registry."""
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `([^`]+)` \|", readme.split("| policy | threshold |", 1)[1].split("\n\n", 1)[0], re.M)
    assert table == [policy_class(n).usage() for n in policy_names("image")]
    pixel_list = readme.split("(`--pixel-policy`:", 1)[1].split(") form a mask", 1)[0]
    design = (ROOT / "docs" / "design.md").read_text().split("## Thresholds", 1)[1].split("\n## ", 1)[0]
    for name in policy_names("pixel"):
        assert f"`{policy_class(name).usage()}`" in pixel_list, name
    for name in policy_names("image"):
        assert f"`{policy_class(name).usage()}`" in design, name


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    dst = tmp_path / "models" / "synthetic"
    shutil.copytree(tiny_model, dst)
    return dst


def test_training_keeps_what_policies_need(tiny_model):
    m = load_manifest(tiny_model)
    assert len(m.calibration["scores"]) == m.calibration["n"] > 0
    assert len(m.calibration["pixel_quantiles"]) == 1001
    assert m.threshold_policy == DEFAULT_IMAGE_POLICY and m.pixel_policy == "image" and m.threshold_revision == 0
    assert m.threshold == image_threshold(parse_policy(DEFAULT_IMAGE_POLICY), np.array(m.calibration["scores"]))


def test_threshold_verb_rewrites_the_manifest_with_history(model_copy, synthetic_root):
    runner = CliRunner()
    before = load_manifest(model_copy)
    # the median rejects half the held-out good images: refused, unless forced
    res = runner.invoke(main, ["threshold", str(model_copy), "--policy", "quantile:0.5"])
    assert res.exit_code == 1 and "rejects 50.0% of the model's held-out good images" in res.output
    assert "--force" in res.output and load_manifest(model_copy).to_json() == before.to_json()
    res = runner.invoke(main, ["threshold", str(model_copy), "--policy", "quantile:0.5", "--json", "--force"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    scores = np.array(before.calibration["scores"])
    assert report["threshold"] == pytest.approx(float(np.quantile(scores, 0.5)))
    assert report["forced"] and report["reviewer"]  # who forced it is in the history
    after = load_manifest(model_copy)
    assert after.threshold == pytest.approx(report["threshold"]) and after.threshold_policy == "quantile:0.5"
    assert after.model_version == before.model_version + ".t1"
    assert after.threshold_history[0]["threshold"] == before.threshold and after.threshold_history[0]["replaced_at"]
    Pipeline.from_artifact(model_copy, device="cpu")  # the weights hash still verifies
    res = runner.invoke(main, ["threshold", str(model_copy), "--policy", "f1", "--data", str(synthetic_root),
                               "--category", "synthetic", "--pixel-policy", "fpr:0.01", "--force"])  # fmt: skip
    assert res.exit_code == 0 and "on the validation set" in res.output and "escapes" in res.output, res.output
    final = load_manifest(model_copy)
    assert final.threshold_revision == 2 and len(final.threshold_history) == 2 and final.pixel_policy == "fpr:0.01"
    res = runner.invoke(main, ["threshold", str(model_copy)])
    assert "revision 1" in res.output and final.model_version in res.output
    res = runner.invoke(main, ["threshold", str(model_copy), "--policy", "f1"])
    assert res.exit_code == 1 and "labelled set (--data ROOT --category C)" in res.output


def test_older_models_get_their_calibration_rescored(model_copy, synthetic_root):
    data = json.loads((model_copy / "manifest.json").read_text())
    kept = data["calibration"]["scores"]
    for key in ("scores", "pixel_quantiles"):
        del data["calibration"][key]
    (model_copy / "manifest.json").write_text(json.dumps(data))
    res = CliRunner().invoke(main, ["threshold", str(model_copy), "--policy", "fpr:0.0"])
    assert res.exit_code == 1 and "--data" in res.output
    res = CliRunner().invoke(main, ["threshold", str(model_copy), "--policy", "fpr:0.0", "--data", str(synthetic_root)])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(load_manifest(model_copy).calibration["scores"], kept, rtol=1e-5)


def test_workers_pick_up_a_revision_without_restart(model_copy):
    registry = ModelRegistry(model_copy.parent, "cpu", None, reload_every_s=0.0)
    pipe = registry.get("synthetic")
    version = pipe.model_version
    res = CliRunner().invoke(main, ["threshold", str(model_copy), "--policy", "manual:0.123", "--force"])
    assert res.exit_code == 0, res.output
    time.sleep(0.01)
    again = registry.get("synthetic")
    assert again.model is pipe.model  # same weights: not reloaded, the networks are shared
    assert again.threshold == pytest.approx(0.123) and again.model_version == version + ".t1"
    assert pipe.model_version == version  # a batch still being scored with the old object keeps one version
    override = ModelRegistry(model_copy.parent, "cpu", None, threshold=9.0)
    assert override.get("synthetic").threshold == 9.0


def test_rollback_restores_earlier_revisions_one_step_at_a_time(model_copy):
    runner = CliRunner()
    original = load_manifest(model_copy)
    scores = np.array(original.calibration["scores"])
    assert runner.invoke(main, ["threshold", str(model_copy), "--rollback"]).exit_code == 1  # nothing before
    for policy in ("fpr:0.05", "sigma:1"):
        res = runner.invoke(main, ["threshold", str(model_copy), "--policy", policy, "--reviewer", "ann"])
        assert res.exit_code == 0, res.output
    first = image_threshold(parse_policy("fpr:0.05"), scores)
    res = runner.invoke(main, ["threshold", str(model_copy), "--rollback", "--reviewer", "bob"])
    assert res.exit_code == 0 and "the thresholds of revision 1" in res.output, res.output
    rolled = load_manifest(model_copy)
    assert rolled.threshold == pytest.approx(first) and rolled.threshold_policy == "fpr:0.05"
    assert rolled.threshold_revision == 3 and len(rolled.threshold_history) == 3  # a new revision, history kept
    assert rolled.threshold_history[-1]["rollback_to"] == 1 and rolled.threshold_history[-1]["reviewer"] == "bob"
    assert rolled.threshold_history[0]["reviewer"] == "ann"
    Pipeline.from_artifact(model_copy, device="cpu")  # still loads
    # again: further back (to training's thresholds), not back and forth between the last two
    assert runner.invoke(main, ["threshold", str(model_copy), "--rollback"]).exit_code == 0
    back = load_manifest(model_copy)
    assert back.threshold == original.threshold and back.threshold_policy == original.threshold_policy
    assert back.pixel_threshold == original.pixel_threshold and back.threshold_revision == 4
    res = runner.invoke(main, ["threshold", str(model_copy), "--rollback"])
    assert res.exit_code == 1 and "no earlier thresholds" in res.output
    res = runner.invoke(main, ["threshold", str(model_copy), "--rollback", "--policy", "sigma:3"])
    assert res.exit_code == 2 and "--rollback" in res.output
    shown = runner.invoke(main, ["threshold", str(model_copy)]).output
    assert "rolled back to revision 1" in shown and "by bob" in shown and "at most 20%" in shown


def test_a_rollback_to_a_threshold_beyond_the_bound_needs_force(model_copy):
    runner = CliRunner()
    assert runner.invoke(main, ["threshold", str(model_copy), "--policy", "manual:0", "--force"]).exit_code == 0
    assert runner.invoke(main, ["threshold", str(model_copy), "--policy", "fpr:0.05"]).exit_code == 0
    res = runner.invoke(main, ["threshold", str(model_copy), "--rollback"])  # to manual:0, rejecting everything
    assert res.exit_code == 1 and "rejects 100.0%" in res.output and load_manifest(model_copy).threshold_revision == 2
    assert runner.invoke(main, ["threshold", str(model_copy), "--rollback", "--force"]).exit_code == 0
    assert load_manifest(model_copy).threshold == 0.0


def test_the_held_out_bound_and_the_label_minimum_by_hand():
    from ear_stream.inspect.thresholds import MAX_HELD_OUT_FRR, held_out_refusal, label_refusal

    good = np.linspace(0.0, 1.0, 101)
    assert held_out_refusal(good, float(np.quantile(good, 1 - MAX_HELD_OUT_FRR))) is None  # exactly at the bound
    assert "rejects 30.7%" in held_out_refusal(good, 0.695)  # type: ignore[operator]
    assert "no held-out good scores" in held_out_refusal(np.array([]), 0.5)  # type: ignore[operator]
    assert label_refusal(np.array([True] * 10 + [False] * 10), 10) is None
    assert "9 defects and 10 good parts" in label_refusal(np.array([True] * 9 + [False] * 10), 10)  # type: ignore[operator]
