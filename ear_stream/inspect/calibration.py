"""Calibration on held-out good images: the split, the scores and map pixels every threshold policy needs.

Part of the good training images is held out (a pure function of the image count,
the fraction and the seed, so it can be recomputed for an older model: :func:`held_out_images`,
:func:`rescore_holdout`). Their scores give the ``sigma``/``quantile``/``fpr`` policies, a quantile
grid of their map pixels the pixel policies, and the scores of the same images with a simulated
defect each (:mod:`.simulate`) a labelled set without one real defect: the ``simf1`` policy
(docs/design.md, "Thresholds"). :func:`recalibrate` re-derives a model's thresholds under another scoring.

The policies themselves are :mod:`.threshold_policies`; revising a stored threshold is :mod:`.thresholds`,
which imports this module (never the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError
from ..model.artifact import Manifest, load_manifest
from ..model.config import DEFAULT_IMAGE_POLICY
from .ood import OODCheck
from .simulate import simulate_defects
from .threshold_policies import FollowImagePolicy, image_threshold, parse_policy, pixel_threshold
from .threshold_stats import good_score_stats, pixel_quantile_grid

if TYPE_CHECKING:  # the pipeline is imported where it is used: the review station revises without it
    from .pipeline import Images, Pipeline

#: seed of the simulated defects scored at calibration (fixed: the same model always gets the same set)
SIMULATION_SEED = 20_261_201
#: held-out map pixels kept for the pixel quantile grid (uniform subsample, fixed seed)
MAX_CALIBRATION_PIXELS = 2_000_000
#: the hold-out fraction of manifests whose training record does not say (TrainConfig's default since the start)
LEGACY_HOLDOUT_FRACTION = 0.1


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/holdout index split; at least 2 images on each side when possible."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = min(max(2, int(round(n * fraction))), max(n - 2, 0))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def calibrate_threshold(
    scores: np.ndarray, policy: str = DEFAULT_IMAGE_POLICY, simulated: np.ndarray | None = None
) -> tuple[float, dict]:
    """Decision threshold from held-out normal scores by a named policy (``sigma:3``, ``simf1``, …).

    The statistics keep the scores themselves (and the simulated-defect scores), so
    ``ear-stream threshold`` can apply another policy later.
    """
    if scores.size == 0:
        raise ConfigError("no held-out images to calibrate the threshold")
    threshold = image_threshold(parse_policy(policy), scores, simulated=simulated)
    stats = {"rule": f"policy {policy} on held-out normal scores", **good_score_stats(scores)}
    if simulated is not None and len(simulated):
        stats["simulated_scores"] = [float(v) for v in simulated]
    return threshold, stats


def calibrate(
    pipe: Pipeline, held_images: Images, policy: str = DEFAULT_IMAGE_POLICY, batch: int = 16
) -> tuple[float, dict]:
    """Score the held-out good images once: the image threshold, its statistics, the pixel statistics and the
    out-of-distribution check (:mod:`.ood`).

    Whole-image models also score the same images with a simulated defect each (``simf1``).
    """
    scores, maps, features = pipe.score_batches(held_images, batch, want_maps=True, want_features=True)
    pixels = [m.float().flatten().numpy() for m in maps]
    simulated = simulated_defect_scores(pipe, held_images, batch) if isinstance(held_images, torch.Tensor) else None
    threshold, stats = calibrate_threshold(scores, policy, simulated)
    stats["ood"] = OODCheck.fit(features).to_json()  # what a frame the model can judge looks like
    values = np.concatenate(pixels) if pixels else np.zeros(1)
    if values.size > MAX_CALIBRATION_PIXELS:
        values = np.random.default_rng(0).choice(values, MAX_CALIBRATION_PIXELS, replace=False)
    stats.update(
        pixel_mean=float(values.mean()), pixel_std=float(values.std()), pixel_quantiles=pixel_quantile_grid(values)
    )
    return threshold, stats


def simulated_defect_scores(pipe: Pipeline, images: torch.Tensor, batch: int = 16) -> np.ndarray:
    """Scores of the held-out good images with one simulated defect each (fixed seed)."""
    corrupted = simulate_defects(images, torch.Generator().manual_seed(SIMULATION_SEED), 1.0).images
    return pipe.score_batches(corrupted, batch)[0]


def held_out_images(manifest: Manifest, data_root: str | Path) -> Images:
    """A model's held-out good images, loaded as it scores them: the hold-out split is a pure function of
    the training images, the seed and the fraction in the manifest."""
    from ..io.datasets import train_images
    from .pipeline import load_images

    t = manifest.training
    files = train_images(data_root, t["category"])
    fraction = float(t.get("holdout_fraction", LEGACY_HOLDOUT_FRACTION))
    _, hold = split_holdout(len(files), fraction, int(t.get("seed", 0)))
    return load_images(manifest.config, [files[i] for i in hold], progress=False)


def rescore_holdout(model_dir: str | Path, data_root: str | Path, device: str = "auto") -> dict[str, Any]:
    """Recompute the calibration statistics (scores and pixel grid) of a model's held-out good images
    (for models written before the scores were kept)."""
    from .pipeline import Pipeline

    manifest = load_manifest(model_dir)
    return calibrate(Pipeline.from_artifact(model_dir, device=device), held_out_images(manifest, data_root))[1]


def recalibrate(pipe: Pipeline, manifest: Manifest, data_root: str | Path) -> float:
    """Re-derive ``pipe``'s image (and pixel) threshold under its *current* scoring with the model's own
    policies, from its held-out good images; returns the image threshold.

    A stored threshold belongs to the scoring it was calibrated under: after ``eval --box`` or a study's
    scoring choice, comparing the new scores with it would report meaningless false rejects and escapes.
    """
    threshold, stats = calibrate(pipe, held_out_images(manifest, data_root), manifest.threshold_policy)
    pipe.threshold = threshold
    pixel = parse_policy(manifest.pixel_policy, pixel=True)
    if not isinstance(pixel, FollowImagePolicy):  # ``image`` follows the image threshold: the pipeline keeps None
        pipe.pixel_threshold = pixel_threshold(pixel, threshold, stats)
    return threshold
