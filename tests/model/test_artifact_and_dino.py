"""Training, artifacts, saliency weights and the inference pipeline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ear_stream.inspect.calibration import calibrate_threshold, split_holdout
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import write_synthetic_category
from ear_stream.model.artifact import ArtifactError, load_artifact, load_manifest
from ear_stream.model.config import ModelConfig, TrainConfig
from ear_stream.model.mosaic_scale import MosaicEstimator, edge_response, fit_estimator, quantise_scale, r10
from ear_stream.model.saliency import DinoAttention, DinoWeightsError, build_dino, write_random_dino_checkpoint
from ear_stream.model.unet import UNet


def test_unet_shapes_and_range():
    for k in (3, 5):
        net = UNet(base_channels=4, kernel_size=k).eval()
        out = net(torch.rand(2, 3, 64, 96))
        assert out.shape == (2, 3, 64, 96) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 3, 40, 64))


def test_model_config_validates():
    with pytest.raises(ValueError, match="saliency"):
        ModelConfig(saliency="attn")
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(image_size=100)
    with pytest.raises(ValueError, match="sum to 1"):
        TrainConfig(loss_weights=(0.5, 0.5, 0.5))


def test_holdout_split_and_threshold_rule():
    train, hold = split_holdout(50, 0.1, seed=3)
    assert len(hold) == 5 and len(set(train) | set(hold)) == 50
    assert np.array_equal(split_holdout(50, 0.1, seed=3)[1], hold)
    thr, stats = calibrate_threshold(np.array([0.1, 0.2, 0.3]), "sigma:3")
    assert thr == pytest.approx(0.2 + 3 * np.std([0.1, 0.2, 0.3]))
    assert stats["n"] == 3 and "rule" in stats


def test_mosaic_scale_estimator():
    assert (
        quantise_scale(45) == 32 and quantise_scale(46) == 64 and quantise_scale(-3) == 2 and quantise_scale(1e9) == 64
    )
    est = MosaicEstimator()
    assert est.estimate(12.1) == 64 and est.estimate(64.4) == 64 and est.estimate(100) == 32 and est.estimate(160) == 2
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = torch.rand(1, 3, 32, 32)
    assert r10(flat).item() == 0.0  # no curvature anywhere: the smoothest surface
    r = edge_response(noisy[:, :1])
    assert r.shape == (1, 1, 32, 32) and r.isnan().any() and (r[~r.isnan()] >= 4 - 1e-3).all()  # r >= 4 when defined
    assert 4 <= r10(noisy).item() <= 100
    fitted = fit_estimator([10.0, 50.0, 90.0], [64, 16, 2])
    assert fitted.slope < 0
    one = fit_estimator([58.0], [8], prior=MosaicEstimator())  # one dataset: keep the slope, move the line
    assert one.slope == MosaicEstimator().slope and one.estimate(58.0) == 8
    with pytest.raises(ValueError, match="at least two"):
        fit_estimator([58.0], [8])


def test_tiny_model_on_real_images_reloads_to_identical_scores(real_data, tmp_path):
    cfg = ModelConfig(image_size=64, saliency="none", base_channels=8)
    out = train_model(
        real_data,
        "magnetic_tile",
        tmp_path / "m",
        cfg,
        TrainConfig(epochs=1, batch_size=8),
        mosaic_scale=None,
        progress=False,
        max_steps=3,
    )
    man = load_manifest(out)
    assert man.config.mosaic_scale in (2, 4, 8, 16, 32, 64)
    assert man.training["steps"] == 3 and man.calibration["n"] >= 2 and man.threshold > 0
    assert "r10" in man.training["mosaic_estimate"]
    from ear_stream.io.datasets import load_tensor, test_samples

    names = {"exp1_num_108719.jpg", "exp1_num_108889.jpg"}  # real test images, picked by name
    samples = [s for s in test_samples(real_data, "magnetic_tile") if s.path.name in names]
    assert len(samples) == 2 and {s.defect for s in samples} == {"blowhole"} and all(s.mask_path for s in samples)
    images = load_tensor([s.path for s in samples], 64, progress=False)
    a = Pipeline.from_artifact(out, device="cpu").score_tensor(images)
    b = Pipeline.from_artifact(out, device="cpu").score_tensor(images)
    assert np.array_equal(a.scores, b.scores)
    assert a.scores.dtype == np.float32 and a.mask_ratio.tolist() == [1.0] * 2


def test_artifact_rejects_tampered_weights(tiny_model, tmp_path):

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    with open(copy / "weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ArtifactError, match="hash"):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match="not a model directory"):
        load_artifact(tmp_path)
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    assert manifest["model_version"].startswith(manifest["weights_sha256"][:12] + "-")


def test_a_config_change_with_the_same_weights_is_a_new_version(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    before = load_manifest(copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["config"]["scoring"]["median"] = not data["config"]["scoring"]["median"]  # same weights, scored differently
    (copy / "manifest.json").write_text(json.dumps(data))
    after = load_manifest(copy)
    assert after.weights_sha256 == before.weights_sha256 and after.model_version != before.model_version


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b"\xff\xfe not json", b'{"config": {"image_size": "x"}}'],
    ids=["deeply-nested", "not-an-object", "not-utf8", "bad-config"],
)
def test_a_hostile_manifest_is_refused_as_an_artifact_error(tiny_model, tmp_path, content):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_manifest(copy)


def test_an_oversized_manifest_is_refused_without_reading_it(tiny_model, tmp_path, monkeypatch):
    from ear_stream.model import artifact

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    monkeypatch.setattr(artifact, "MAX_MANIFEST_BYTES", 1024)
    with open(copy / "manifest.json", "ab") as f:
        f.write(b" " * 2048)
    with pytest.raises(ArtifactError, match="over the 1024"):
        load_manifest(copy)


@pytest.mark.parametrize("layout", ["official", "timm", "teacher"])
def test_dino_checkpoint_layouts_load(tmp_path, layout):
    path = write_random_dino_checkpoint(
        tmp_path / f"dino.{'safetensors' if layout == 'timm' else 'pth'}", layout=layout
    )
    att = DinoAttention(build_dino(path))(torch.rand(2, 3, 64, 64))
    assert att.shape == (2, 28, 28)
    total = att.sum(dim=(1, 2))  # a softmax row minus the CLS->CLS share
    assert ((total > 0.98) & (total < 1.0)).all()
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(DinoWeightsError):
        build_dino(bad)


def test_cls_attention_matches_full_attention(tmp_path):
    """The one-row computation equals row 0 of timm's full attention matrix."""
    path = write_random_dino_checkpoint(tmp_path / "dino.pth")
    vit = build_dino(path)
    x = torch.rand(1, 3, 224, 224)
    module = DinoAttention(vit)
    got = module(x)
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed((x - module.mean) / module.std)))
    for blk in vit.blocks[:-1]:
        tokens = blk(tokens)
    blk = vit.blocks[-1]
    attn = blk.attn
    qkv = attn.qkv(blk.norm1(tokens)).reshape(1, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    full = ((qkv[0] @ qkv[1].transpose(-2, -1)) * attn.scale).softmax(-1)
    expected = full[:, :, 0, 1:].mean(1).reshape(1, 28, 28)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_dino_model_trains_saves_reloads_and_scores(tmp_path):
    root = tmp_path / "data"
    write_synthetic_category(root, "tiny", n_train=6, n_test_good=2, n_test_defect=1)
    weights = write_random_dino_checkpoint(tmp_path / "dino_deitsmall8_pretrain.pth", layout="official")
    cfg = ModelConfig(image_size=64, saliency="dino", base_channels=4)
    out = train_model(
        root,
        "tiny",
        tmp_path / "model",
        cfg,
        TrainConfig(epochs=1, batch_size=2),
        mosaic_scale=None,
        dino_weights=weights,
        progress=False,
        max_steps=2,
    )
    man = load_manifest(out)
    assert man.config.saliency == "dino" and man.dino_weights_sha256
    with pytest.raises(ArtifactError, match="DINO"):
        Pipeline.from_artifact(out, device="cpu", dino_weights=None)
    pipe = Pipeline.from_artifact(out, device="cpu", dino_weights=weights)
    res = pipe.score_tensor(torch.rand(3, 3, 64, 64))
    assert res.scores.shape == (3,) and (res.mask_ratio > 0).all() and (res.mask_ratio < 1).all()
    other = write_random_dino_checkpoint(tmp_path / "other.pth", seed=1)
    with pytest.raises(ArtifactError, match="differ"):
        Pipeline.from_artifact(out, device="cpu", dino_weights=other)


def test_riad_masks_partition_the_image():
    from ear_stream.model import riad

    gen = torch.Generator().manual_seed(0)
    for cell in riad.CELL_SIZES:
        masks = riad.disjoint_masks(37, 50, cell, 3, gen)
        assert masks.shape == (3, 1, 37, 50)
        assert torch.equal(masks.sum(0), torch.ones(1, 37, 50))  # every pixel hidden exactly once
        assert (masks.flatten(1).sum(1) > 0).all()


def test_riad_baseline_trains_and_scores_reproducibly(synthetic_root, tmp_path):
    cfg = ModelConfig(image_size=64, method="riad", base_channels=4)
    out = train_model(
        synthetic_root,
        "synthetic",
        tmp_path / "riad",
        cfg,
        TrainConfig(epochs=1, batch_size=4),
        mosaic_scale=8,
        progress=False,
        max_steps=2,
    )
    pipe = Pipeline.from_artifact(out, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    a, b = pipe.score_tensor(x, want_maps=True), pipe.score_tensor(x)
    assert np.array_equal(a.scores, b.scores) and a.maps.shape == (2, 1, 64, 64)
    assert np.allclose(a.scores, a.maps.flatten(1).amax(1).numpy())
