"""Weight-free saliency variants, resolution-aware scoring, the mosaic-scale floor and the border fix."""

from __future__ import annotations

import json

import pytest
import torch

from ear_stream.inspect.pipeline import Pipeline, score_maps
from ear_stream.inspect.training import RunLimits, Trainer, estimate_mosaic_scale, train_model
from ear_stream.inspect.variant import Variant
from ear_stream.model import ops
from ear_stream.model.artifact import ArtifactError, load_artifact, load_manifest, save_artifact
from ear_stream.model.config import (
    AUTO_WEIGHT_FREE,
    WEIGHT_FREE_SALIENCY,
    ModelConfig,
    ScoringConfig,
    TrainConfig,
    default_box,
    default_scales,
    min_mosaic_scale,
    resolve_saliency,
)
from ear_stream.model.factory import build_saliency, load_model
from ear_stream.model.mosaic_scale import MosaicEstimator
from ear_stream.model.reference import saliency_mask
from ear_stream.model.unet import UNet
from ear_stream.model.weightfree import create_saliency, weight_free_variants


def texture(b: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Gray vertical-streak texture with noise, like the magnetic-tile surfaces."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.rand(b, 1, 1, size, generator=g) * 0.2 + 0.4
    x = cols.expand(b, 1, size, size) + torch.randn(b, 1, size, size, generator=g) * 0.03
    return x.clamp(0, 1).expand(b, 3, size, size).contiguous()


def test_registry_matches_config():
    assert set(weight_free_variants()) == set(WEIGHT_FREE_SALIENCY)
    with pytest.raises(ValueError, match="unknown weight-free saliency"):
        create_saliency("dino2")


@pytest.mark.parametrize("name", ["spectral", "stats"])
def test_single_pass_variants_are_deterministic_batched_and_shaped(name):
    sal = create_saliency(name, {"grid": 8})
    images = texture(5, 64)
    if sal.fitted:
        sal.fit(texture(16, 64, seed=1))
    a = sal(images)
    assert a.shape == (5, 8, 8) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, sal(images))  # deterministic
    singles = torch.cat([sal(images[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(a, singles, rtol=1e-5, atol=1e-6)  # batching changes nothing
    assert sal(images[:0]).shape[0] == 0


def test_spectral_residual_finds_a_blob_and_ignores_the_border():
    images = texture(4, 128)
    images[:, :, 60:68, 60:68] = 0.05  # a blowhole in the middle
    att = create_saliency("spectral", {"grid": 16})(images)
    mask = saliency_mask(att, (128, 128))
    assert mask[:, 0, 60:68, 60:68].mean() == 1.0  # the defect is excised
    plain = create_saliency("spectral", {"grid": 16})(texture(8, 128, seed=3))
    border = torch.cat([plain[:, 0], plain[:, -1], plain[:, :, 0], plain[:, :, -1]], dim=1).mean()
    interior = plain[:, 2:-2, 2:-2].mean()
    assert border < 1.5 * interior, (float(border), float(interior))  # reflect padding: no bright frame


def test_stats_variant_flags_the_deviating_cell():
    sal = create_saliency("stats", {"grid": 8})
    sal.fit(texture(32, 64, seed=2))
    img = texture(1, 64, seed=5)
    img[:, :, 16:24, 40:48] = 0.95
    att = sal(img)[0]
    assert att.argmax() == 2 * 8 + 5


def test_self_saliency_needs_the_pipeline():
    with pytest.raises(RuntimeError, match="needs the U-Net"):
        create_saliency("self")(texture(1))


def test_resolution_aware_scoring_defaults():
    assert (default_box(256), default_box(128), default_box(64)) == (21, 11, 5)
    assert (default_scales(256), default_scales(128), default_scales(64)) == (3, 2, 1)
    sc = ModelConfig(image_size=128).scoring
    assert (sc.box, sc.scales) == (11, 2)
    explicit = ModelConfig(image_size=128, scoring=ScoringConfig(box=21, scales=3)).scoring
    assert (explicit.box, explicit.scales) == (21, 3)


def test_old_manifests_keep_their_scoring_and_new_ones_get_a_border_band():
    cfg = ModelConfig.from_dict({"image_size": 64, "saliency": "none", "scoring": {"scales": 3, "box": 21}})
    assert (cfg.scoring.box, cfg.scoring.scales, cfg.scoring.border) == (21, 3, 0)
    assert ModelConfig(image_size=128).scoring.border == 11 // 2


def test_auto_resolves_to_dino_only_with_weights():
    assert resolve_saliency("auto", has_dino_weights=True) == "dino"
    assert resolve_saliency("auto", has_dino_weights=False) == AUTO_WEIGHT_FREE
    assert resolve_saliency("self", has_dino_weights=False) == "self"


def test_mosaic_estimator_never_goes_below_the_floor():
    images = texture(4, 128)
    copying = MosaicEstimator(intercept=2.0, slope=0.0)  # an estimator that would pick m = 2
    for saliency in ("none", "spectral"):
        floor = min_mosaic_scale(128, saliency)
        m, _ = estimate_mosaic_scale(images, None, copying, floor)
        assert m == floor >= 4
    assert min_mosaic_scale(128, "none") == 8 and min_mosaic_scale(256, "none") == 16
    assert min_mosaic_scale(256, "spectral") == 8


def test_border_band_is_left_out_of_score_and_map():
    images = torch.rand(2, 3, 64, 64)
    recon = images.clone()
    recon[:, :, :3, :] = 0.0  # reconstruction error only in the top 3 rows
    sc = ScoringConfig(scales=1, box=1, border=0, median=False)  # no box: the band alone decides
    hot, _ = score_maps(images, recon, sc, False)
    cold, dmap = score_maps(images, recon, ScoringConfig(scales=1, box=1, border=5, median=False), True)
    assert (hot > 0.3).all() and (cold < 0.05).all()
    assert dmap.shape == (2, 1, 64, 64) and dmap[..., :5, :].abs().max() == 0


@pytest.mark.parametrize("saliency", ["spectral", "stats", "self"])
def test_train_and_score_every_weight_free_variant(tmp_path, synthetic_root, saliency):
    cfg = ModelConfig(image_size=64, saliency=saliency, base_channels=8, saliency_params={"grid": 8})
    path = train_model(
        synthetic_root, "synthetic", tmp_path / saliency, cfg, TrainConfig(epochs=50, batch_size=8, simulate=0.0), max_steps=3,
        progress=False, curve_every_minutes=0.0001,
    )  # fmt: skip
    man = load_manifest(path)
    assert man.config.saliency == saliency and man.config.saliency_params["grid"] == 8
    assert man.config.mosaic_scale >= min_mosaic_scale(64, saliency)
    assert man.training["stop_reason"] == "max_steps"
    assert [json.loads(line)["step"] for line in (path / "curve.jsonl").read_text().splitlines()][-1] == 3
    model, _ = load_model(path)
    stored = {k for k in model.state_dict() if k.startswith("saliency.")}
    assert (stored == {"saliency.mean", "saliency.std"}) == (saliency == "stats")
    pipe = Pipeline.from_artifact(path, device="cpu")
    res = pipe.score_tensor(texture(3, 64), want_recon=True)
    assert res.scores.shape == (3,) and res.mask.shape == (3, 1, 64, 64)
    assert 0.0 < float(res.mask_ratio.mean()) < 0.6  # only the salient part is excised


def test_max_minutes_budget_stops_training(tmp_path, synthetic_root):
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8)
    path = train_model(
        synthetic_root, "synthetic", tmp_path / "m", cfg, TrainConfig(epochs=1000), max_minutes=0.02, progress=False
    )
    man = load_manifest(path)
    assert man.training["stop_reason"] == "max_minutes" and man.training["seconds"] < 30
    assert man.training["clock"] == "wall"


def test_a_cpu_clock_budget_counts_this_process_cpu_time(tmp_path, synthetic_root):
    """A study on a shared machine budgets CPU seconds: time spent waiting for a core does not count."""
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8)
    limits = RunLimits(max_minutes=0.02, progress=False, clock="cpu")
    trainer = Trainer(synthetic_root, "synthetic", tmp_path / "m", cfg, TrainConfig(epochs=1000), device="cpu",
                      limits=limits)  # fmt: skip
    man = load_manifest(trainer.setup().run())
    assert man.training["stop_reason"] == "max_minutes" and man.training["clock"] == "cpu"
    assert 1.2 <= man.training["seconds"] < 30


def test_a_model_of_a_uniform_texture_has_no_border_dominated_maps():
    """Trained briefly to recover a uniform texture: the max lands near the edge no more than its area share."""
    torch.manual_seed(0)
    unet = UNet(base_channels=4)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    for i in range(40):
        x = texture(8, 64, seed=100 + i)
        composite, _ = ops.excise(x, None, 8)
        loss = (unet(composite) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval()
    sc = ModelConfig(image_size=64).scoring  # resolution defaults: box 5, border 2
    with torch.no_grad():
        y = texture(64, 64, seed=8)
        _, dmap = score_maps(y, unet(ops.excise(y, None, 8)[0]), sc, True)
    idx = dmap.flatten(1).argmax(dim=1)
    r, c = idx // 64, idx % 64
    near = ((r < 6) | (r >= 58) | (c < 6) | (c >= 58)).float().mean()
    allowed = 64 - 2 * sc.border
    share = 1 - (64 - 12) ** 2 / allowed**2
    assert float(near) <= share + 0.1, (float(near), share)


def test_build_saliency_restores_fitted_state():
    cfg = ModelConfig(image_size=64, saliency="stats", saliency_params={"grid": 4})
    sal = build_saliency(cfg.saliency, cfg.saliency_params)
    sal.load_state_dict({"mean": torch.ones(2, 4, 4), "std": torch.full((2, 4, 4), 2.0)})
    assert float(sal.std.mean()) == 2.0 and sal.grid == 4
    assert build_saliency("none") is None  # a variant without attention has no module
    assert Variant.of(cfg).single_pass and not Variant.of(cfg).two_pass


@pytest.mark.parametrize("saliency", ["spectral", "self"])
def test_keep_context_changes_only_the_excised_pixels(tmp_path, synthetic_root, saliency):
    cfg = ModelConfig(image_size=64, saliency=saliency, base_channels=8, keep_context=True)
    path = train_model(
        synthetic_root, "synthetic", tmp_path / "m", cfg, TrainConfig(epochs=1), max_steps=2, progress=False
    )
    pipe = Pipeline.from_artifact(path, device="cpu")
    assert pipe.config.keep_context
    x = texture(3, 64)
    attention, _, ratio, recon = pipe.recover(x)
    changed = (recon != x).any(dim=1, keepdim=True).float()
    excised = saliency_mask(attention, (64, 64))
    assert (changed <= excised).all() and 0 < float(ratio.mean()) < 1


def test_normal_map_is_fitted_on_training_images_stored_and_subtracted(tmp_path, synthetic_root):
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8, scoring=ScoringConfig(normal_map=True))
    path = train_model(
        synthetic_root, "synthetic", tmp_path / "m", cfg, TrainConfig(epochs=1), max_steps=2, progress=False
    )
    model, manifest = load_model(path)
    assert manifest.config.scoring.normal_map and model.state_dict()["scoring.normal_map"].shape == (1, 1, 64, 64)
    pipe = Pipeline.from_artifact(path, device="cpu")
    x = texture(4, 64)
    with_normal = pipe.score_tensor(x, want_maps=True)
    pipe.config.scoring.normal_map = False
    without = pipe.score_tensor(x, want_maps=True)
    b = pipe.config.scoring.border
    diff = (without.maps - with_normal.maps)[..., b:-b, b:-b]
    torch.testing.assert_close(diff, pipe.normal_map[..., b:-b, b:-b].expand_as(diff), rtol=0, atol=1e-6)
    # a manifest that asks for a normal map that is not stored is refused, not silently ignored
    unet, manifest = load_artifact(path)
    save_artifact(tmp_path / "no_map", unet, manifest)  # valid hash, the map left out
    with pytest.raises(ArtifactError, match="normal map"):
        Pipeline.from_artifact(tmp_path / "no_map", device="cpu")
