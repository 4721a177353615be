"""Simulated defects, the recovery check, the learned head, the mosaic bound and the simf1 policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ear_stream.inspect.augment import step_generator
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.recovery import DEGENERATE_RATIO, recovery_check
from ear_stream.inspect.simulate import VISIBLE_CHANGE, curve_region, simulate_defects, smooth_noise
from ear_stream.inspect.thresholds import image_threshold, parse_policy
from ear_stream.inspect.training import estimate_mosaic_scale, train_model
from ear_stream.io.datasets import load_tensor, train_images
from ear_stream.model.artifact import ArtifactError, build_unet
from ear_stream.model.config import ModelConfig, TrainConfig, max_mosaic_scale
from ear_stream.model.head import AnomalyHead, focal_dice_loss
from ear_stream.model.mosaic_scale import MosaicEstimator


def _batch(b: int = 6, size: int = 64) -> torch.Tensor:
    return torch.rand((b, 3, size, size), generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4


def test_simulation_is_a_function_of_seed_and_step():
    x = _batch()
    a = simulate_defects(x, step_generator(0, 7), 1.0)
    b = simulate_defects(x, step_generator(0, 7), 1.0)
    c = simulate_defects(x, step_generator(0, 8), 1.0)
    assert torch.equal(a.images, b.images) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("shape", [(0, 3, 32, 32), (1, 3, 32, 48), (5, 3, 64, 64), (3, 3, 96, 40)])
def test_simulated_defects_change_only_the_marked_region(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    sim = simulate_defects(x, torch.Generator().manual_seed(3), 1.0)
    assert sim.images.shape == x.shape and sim.mask.shape == (shape[0], 1, *shape[2:])
    assert set(sim.mask.unique().tolist()) <= {0.0, 1.0}
    assert bool(((sim.images >= 0) & (sim.images <= 1)).all())
    changed = (sim.images - x).abs().amax(dim=1, keepdim=True) >= VISIBLE_CHANGE
    # every marked pixel changed visibly; pixels changed outside the mask are only the soft edge (≤ 1 px ring)
    assert bool(changed[sim.mask > 0].all())
    ring = torch.nn.functional.max_pool2d(sim.mask, 3, stride=1, padding=1) if shape[0] else sim.mask
    assert not bool((changed & (ring == 0)).any())


def test_probability_zero_leaves_the_batch_alone_and_one_corrupts_every_image():
    x = _batch()
    none = simulate_defects(x, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(none.images, x) and none.mask.sum() == 0
    every = simulate_defects(x, torch.Generator().manual_seed(0), 1.0)
    assert bool((every.mask.flatten(1).sum(1) > 0).all())


def test_curves_are_thin_and_noise_is_smooth():
    gen = torch.Generator().manual_seed(4)
    region = curve_region(128, 128, gen)
    assert 0 < region.mean() < 0.1  # a thin line, not a blob
    noise = smooth_noise(64, 64, gen)
    assert float((noise[:, 1:] - noise[:, :-1]).abs().mean()) < 0.05  # neighbours agree: smooth


def test_mosaic_scale_keeps_at_least_four_cells_a_side():
    est = MosaicEstimator()
    for size in (64, 128, 256):
        flat = torch.full((4, 3, size, size), 0.5)  # no edges at all: the estimator asks for the largest m
        m, _ = estimate_mosaic_scale(flat, None, est)
        assert m <= max_mosaic_scale(size) == size // 4


def test_an_explicit_mosaic_scale_over_the_bound_is_refused(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="fewer than 4×4 cells"):
        train_model(synthetic_root, "synthetic", tmp_path / "m", ModelConfig(image_size=64), TrainConfig(), 32)


def test_a_fresh_unet_is_degenerate(synthetic_root):
    cfg = ModelConfig(image_size=64, saliency="none", base_channels=8, mosaic_scale=8)
    images = load_tensor(train_images(synthetic_root, "synthetic")[:8], 64, progress=False)
    check = recovery_check(Pipeline(cfg, build_unet(cfg), 1.0, torch.device("cpu")), images)
    assert check.degenerate and check.ratio_to_flat >= DEGENERATE_RATIO
    assert "DEGENERATE" in check.verdict()


def test_focal_dice_loss_prefers_the_right_mask():
    target = torch.zeros((1, 1, 16, 16))
    target[..., 4:8, 4:8] = 1
    right = focal_dice_loss(torch.where(target > 0, 8.0, -8.0), target)
    wrong = focal_dice_loss(torch.where(target > 0, -8.0, 8.0), target)
    assert right < 0.05 < wrong


@pytest.fixture(scope="module")
def head_model(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "synthetic"
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8, head=True, head_width=4)
    return train_model(
        synthetic_root,
        "synthetic",
        out,
        cfg,
        TrainConfig(batch_size=4, lr=1e-3, simulate=0.5),
        progress=False,
        max_steps=4,
    )


def test_a_head_model_saves_reloads_and_scores_the_same(head_model, synthetic_root):
    manifest = json.loads((head_model / "manifest.json").read_text())
    assert manifest["config"]["head"] and manifest["training"]["simulate"] == 0.5
    assert "recovery" in manifest["training"] and isinstance(manifest["training"]["degenerate"], bool)
    assert len(manifest["calibration"]["simulated_scores"]) == manifest["calibration"]["n"]
    images = load_tensor(train_images(synthetic_root, "synthetic")[:3], 64, progress=False)
    a = Pipeline.from_artifact(head_model, device="cpu", precision="fp32")
    assert a.head is not None
    res = a.score_tensor(images, want_maps=True)
    again = Pipeline.from_artifact(head_model, device="cpu", precision="fp32").score_tensor(images)
    assert np.array_equal(res.scores, again.scores)
    assert res.maps.shape == (3, 1, 64, 64) and float(res.maps.min()) >= 0 and float(res.maps.max()) <= 1


def test_a_head_model_without_head_weights_is_refused(head_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from ear_stream.model.artifact import load_manifest, sha256_file, write_manifest
    from ear_stream.model.head import HEAD_PREFIX

    broken = tmp_path / "broken"
    broken.mkdir()
    state = {
        k: v for k, v in load_file(str(head_model / "weights.safetensors")).items() if not k.startswith(HEAD_PREFIX)
    }
    save_file(state, str(broken / "weights.safetensors"))
    manifest = load_manifest(head_model)
    manifest.weights_sha256 = sha256_file(broken / "weights.safetensors")
    write_manifest(broken, manifest)
    with pytest.raises(ArtifactError, match="no head weights are stored"):
        Pipeline.from_artifact(broken, device="cpu")


def test_the_head_scores_images_of_any_size():
    head = AnomalyHead(4).eval()
    cfg = ModelConfig(image_size=64, saliency="none", base_channels=8, mosaic_scale=8, head=True, head_width=4)
    pipe = Pipeline(cfg, build_unet(cfg), 1.0, torch.device("cpu"), head=head, precision="fp32")
    x = torch.rand((2, 3, 66, 70))
    scores, maps = pipe.score_recon(x, x.flip(-1), True)
    assert scores.shape == (2,) and maps.shape == (2, 1, 66, 70)


def test_simf1_takes_the_f1_optimal_cut_between_good_and_simulated():
    good, sim = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7])
    thr = image_threshold(parse_policy("simf1"), good, simulated=sim)
    assert 0.3 <= thr < 0.5
    with pytest.raises(ValueError, match="simulated-defect scores"):
        image_threshold(parse_policy("simf1"), good, simulated=None)
    with pytest.raises(ValueError, match="takes no value"):
        parse_policy("simf1:3")


def test_the_head_is_on_by_default_exactly_when_defects_are_simulated():
    from ear_stream.model.config import ModelConfig, ScoringConfig

    auto = ModelConfig()
    assert auto.head is None and auto.resolved_head(0.5) and not auto.resolved_head(0.0)
    assert not ModelConfig(method="riad").resolved_head(0.5)  # the baseline has nothing for a head to read
    assert not ModelConfig(scoring=ScoringConfig(normal_map=True)).resolved_head(0.5)
    assert ModelConfig(head=False).resolved_head(0.5) is False
    # a manifest written before the head existed loads as a model without one
    assert ModelConfig.from_dict({k: v for k, v in auto.to_dict().items() if k != "head"}).head is False
