"""Native-resolution models: crop training, tiled inference with stitched reconstructions, any image size."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import needs_redis
from torch import nn

from ear_stream.cli import main
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.tiling import owned_spans, plan_tiles, tile_starts
from ear_stream.inspect.training import train_model
from ear_stream.model.artifact import ArtifactError
from ear_stream.model.config import ModelConfig, TrainConfig
from ear_stream.stream.worker import ModelRegistry


@pytest.fixture(scope="module")
def native_model(synthetic_root, tmp_path_factory):
    """32-px crops at native scale, tiles of 64 with 16 px overlap."""
    out = tmp_path_factory.mktemp("native") / "synthetic"
    cfg = ModelConfig(image_size=32, saliency="spectral", base_channels=8, scale=1.0, tile=64, tile_overlap=16)
    return train_model(synthetic_root, "synthetic", out, cfg, TrainConfig(epochs=1, batch_size=4, lr=1e-3, simulate=0.0),
                       mosaic_scale=8, max_steps=4, progress=False)  # fmt: skip


@pytest.mark.parametrize(("tile", "overlap"), [(32, 0), (64, 16), (64, 63), (96, 32)])
def test_tiles_cover_every_pixel_once(tile, overlap):
    for length in [1, 5, 31, 32, 33, 64, 95, 96, 97, 200, 1023]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and (starts[-1] + tile >= length)
        spans = owned_spans(starts, tile, length)
        assert spans[0][0] == 0 and spans[-1][1] == length
        for (a, b), (c, _d) in itertools.pairwise(spans):
            assert b == c and a < b
        for (a, b), s in zip(spans, starts, strict=True):  # a tile only writes pixels it saw
            assert s <= a and b <= s + tile


def test_bad_tiling_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(image_size=32, scale=1.0, tile=48)
    with pytest.raises(ValueError, match="native-resolution"):
        ModelConfig(image_size=32, tile=64)
    with pytest.raises(ValueError, match="normal map"):
        ModelConfig(image_size=32, scale=1.0, scoring={"normal_map": True})


class Pointwise(nn.Module):
    """A U-Net stand-in without spatial context: stitching must then be exact."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        torch.nn.init.normal_(self.mix.weight, std=0.5, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.mix.bias)

    def forward(self, x):
        return torch.sigmoid(self.mix(x))


def test_stitched_tiles_give_the_one_pass_map_when_the_unet_has_no_context():
    # mosaic cells (m = 8) align with every tile start, so only the stitching can differ
    cfg = ModelConfig(image_size=32, saliency="none", mosaic_scale=8, scale=1.0, tile=64, tile_overlap=16)
    image = torch.rand(3, 96, 160)
    tiled = Pipeline(cfg, Pointwise(), 1.0, torch.device("cpu"), tile_batch=3)
    assert len(plan_tiles(0, 96, 160, 64, 16)) == 6
    one = Pipeline(cfg.with_tiling(192, 0), Pointwise(), 1.0, torch.device("cpu"))
    a, b = tiled.score_tiled([image], want_maps=True), one.score_tiled([image], want_maps=True)
    torch.testing.assert_close(a.maps[0], b.maps[0], rtol=0, atol=1e-6)
    assert a.scores[0] == pytest.approx(b.scores[0], abs=1e-6)
    assert a.maps[0].shape == (1, 96, 160) and a.mask_ratio[0] == pytest.approx(1.0)


def test_a_defect_on_a_tile_seam_scores_as_in_one_pass(native_model):
    """The box filter and the max run on the stitched image: a seam does not split a defect's score."""
    pipe = Pipeline.from_artifact(native_model, device="cpu")  # tiles 64, overlap 16: a seam at x ≈ 56
    one = Pipeline.from_artifact(native_model, device="cpu", tile=160, tile_overlap=0)
    yy, xx = np.mgrid[0:96, 0:144]
    surface = 0.5 + 0.05 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    blob = (yy - 48) ** 2 + (xx - 56) ** 2 < 36
    good = np.repeat(surface[..., None], 3, axis=2).astype(np.float32)
    bad = np.repeat(np.where(blob, 0.05, surface)[..., None], 3, axis=2).astype(np.float32)
    tiled, whole = pipe.score_arrays([good, bad], want_maps=True), one.score_arrays([good, bad], want_maps=True)
    assert tiled.scores[1] > tiled.scores[0] and whole.scores[1] > whole.scores[0]
    assert tiled.scores[1] == pytest.approx(whole.scores[1], rel=0.25)
    peak = np.unravel_index(int(tiled.maps[1][0].argmax()), (96, 144))
    assert abs(peak[0] - 48) <= 12 and abs(peak[1] - 56) <= 12


def test_a_4096_by_1024_image_scores_in_bounded_tile_batches(native_model):
    pipe = Pipeline.from_artifact(native_model, device="cpu", tile=256, tile_overlap=32)
    pipe.tile_batch = 8
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x: (seen.append(x.shape[0]), forward(x))[1]
    image = np.random.default_rng(0).uniform(0.4, 0.6, (1024, 4096, 3)).astype(np.float32)
    res = pipe.score_arrays([image], want_maps=True)
    assert np.isfinite(res.scores).all() and res.maps[0].shape == (1, 1024, 4096)
    assert max(seen) <= 8 and sum(seen) == len(plan_tiles(0, 1024, 4096, 256, 32))


def test_images_of_any_size_and_aspect_score_in_one_batch(native_model):
    pipe = Pipeline.from_artifact(native_model, device="cpu")
    rng = np.random.default_rng(1)
    arrays = [rng.uniform(0, 1, (h, w, 3)).astype(np.float32) for h, w in [(17, 300), (64, 64), (200, 40), (5, 5)]]
    res = pipe.score_arrays(arrays, want_maps=True)
    assert np.isfinite(res.scores).all()
    assert [tuple(m.shape[-2:]) for m in res.maps] == [(17, 300), (64, 64), (200, 40), (5, 5)]
    single = [pipe.score_arrays([a]).scores[0] for a in arrays]  # batch-invariant
    np.testing.assert_allclose(res.scores, single, rtol=1e-5)


def test_tiling_overrides_reach_the_worker_registry(native_model, tiny_model):
    registry = ModelRegistry(native_model.parent, "cpu", None, tile=96, tile_overlap=8)
    assert (registry.get("synthetic").config.tile, registry.get("synthetic").config.tile_overlap) == (96, 8)
    with pytest.raises(ArtifactError, match="native-resolution"):
        Pipeline.from_artifact(tiny_model, device="cpu", tile=64)


def test_cli_trains_on_crops_and_scores_with_tiles(synthetic_root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(main, ["train", str(synthetic_root), "--category", "synthetic", "--out", str(out),
                               "--train-crop", "32", "--scale", "0.5", "--width", "8", "--max-steps", "2",
                               "--mosaic-scale", "8", "--eval-every", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert (cfg["image_size"], cfg["scale"], cfg["tile"], cfg["tile_overlap"]) == (32, 0.5, 32, 8)
    images = str(synthetic_root / "synthetic" / "test")
    res = runner.invoke(main, ["score", images, "--model", str(out), "--out", str(tmp_path / "r"),
                               "--tile", "64", "--tile-overlap", "16", "--save-maps", str(tmp_path / "maps")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "maps").glob("*_map.png"))) == 16
    res = runner.invoke(main, ["eval", str(synthetic_root), "--category", "synthetic", "--model", str(out),
                               "--tile", "64"])  # fmt: skip
    assert res.exit_code == 0 and "pixel AUROC" in res.output, res.output
    res = runner.invoke(main, ["score", images, "--model", str(out), "--out", str(tmp_path / "r"), "--tile", "50"])
    assert res.exit_code == 2 and "multiple of 32" in res.output
    res = runner.invoke(main, ["train", str(synthetic_root), "--category", "synthetic", "--out", str(tmp_path / "x"),
                               "--scale", "0.5"])  # fmt: skip
    assert res.exit_code == 2 and "--train-crop" in res.output


@needs_redis
@pytest.mark.parametrize("budget", [64_000_000, 20_000])
def test_stream_worker_scores_native_images_of_mixed_sizes(native_model, redis_server, stream_cfg, tmp_path, budget):
    """The worker goes through Pipeline like the CLI: mixed sizes in one batch, one row each, nothing left.
    With a pixel budget of 20,000 decoded pixels the read batch is scored in waves that each fit it."""
    import io

    from PIL import Image

    from ear_stream.io.results import read_results
    from ear_stream.stream import queue as q
    from ear_stream.stream.worker import Worker, WorkerConfig

    client = q.connect(redis_server.url)
    rng = np.random.default_rng(0)
    ids = []
    for i, (h, w) in enumerate([(40, 300), (128, 96), (33, 33), (250, 70)]):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(90, 160, (h, w), dtype=np.uint8)).save(buf, format="PNG")
        ids.append(f"n-{i}")
        q.push(client, "synthetic", buf.getvalue(), ids[-1], {}, stream_cfg)
    cfg = WorkerConfig(redis_url=redis_server.url, models_dir=native_model.parent, out_dir=tmp_path / "out",
                       stream=stream_cfg, device="cpu", batch_size=8, flush_seconds=0.2, block_ms=100,
                       exit_when_idle_s=0.5, tile=64, tile_overlap=32, max_batch_pixels=budget)  # fmt: skip
    stats = Worker(cfg).run()
    assert stats["scored"] == 4 and stats["dead_letters"] == 0
    assert stats["batches"] == (1 if budget > 100_000 else 3)  # 12000 | 12288 + 1089 | 17500 pixels
    assert sorted(read_results(tmp_path / "out")["id"].to_pylist()) == ids
    assert q.backlog(client, stream_cfg) == (0, 0)
