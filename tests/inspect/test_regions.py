"""Defect regions: batched connected components against scipy, boxes in original pixels, Parquet and stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.regions import label_by_propagation, label_components, label_on_cpu, region_table
from ear_stream.io.results import read_results

EIGHT = np.ones((3, 3), dtype=bool)


def _same_partition(ours: np.ndarray, ref: np.ndarray) -> bool:
    """Two labelings describe the same components (ids may differ)."""
    if not np.array_equal(ours > 0, ref > 0):
        return False
    pairs = set(zip(ours[ours > 0].tolist(), ref[ref > 0].tolist(), strict=True))
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize("label", [label_by_propagation, label_on_cpu, label_components])
@pytest.mark.parametrize("shape", [(0, 5, 5), (1, 1, 1), (1, 7, 13), (3, 31, 17), (2, 64, 64)])
@pytest.mark.parametrize("density", [0.2, 0.45, 0.7])
def test_components_match_scipy(shape, density, label):
    rng = np.random.default_rng(sum(shape) + int(density * 100))
    mask = rng.random(shape) < density
    labels = (label(torch.from_numpy(mask)) if mask.size else label_components(torch.from_numpy(mask))).numpy()
    assert labels.shape == shape
    for b in range(shape[0]):
        ref, _ = ndimage.label(mask[b], structure=EIGHT)
        assert _same_partition(labels[b], ref)
    if shape[0] > 1:  # ids never repeat across the batch
        ids = [set(np.unique(labels[b][labels[b] > 0]).tolist()) for b in range(shape[0])]
        assert all(not (ids[i] & ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids)))


def test_the_device_propagation_and_the_cpu_labelling_give_the_same_ids():
    mask = torch.from_numpy(np.random.default_rng(3).random((3, 40, 33)) < 0.5)
    assert torch.equal(label_by_propagation(mask), label_on_cpu(mask))


def test_a_spiral_converges():
    """A long snake needs many propagation steps: the loop must run until it stops changing."""
    m = np.zeros((1, 21, 21), dtype=bool)
    m[0, ::2, :] = True
    m[0, 1::4, -1] = True
    m[0, 3::4, 0] = True
    labels = label_by_propagation(torch.from_numpy(m)).numpy()
    assert len(np.unique(labels[labels > 0])) == 1


def test_region_table_by_hand():
    dmap = torch.zeros(2, 8, 8)
    dmap[0, 1:3, 2:5] = 0.5  # 2×3 block
    dmap[0, 1, 3] = 0.9
    dmap[0, 6, 6] = 0.4  # single pixel
    out = region_table(dmap, dmap > 0.3, [(16, 32), (8, 8)])  # image 0 was 16×32 before resizing to 8×8
    assert out[1] == []
    big, small = out[0]
    # map x 2..4 → original x 8..19 (4× wider), y 1..2 → 2..5 (2× taller); area 6 map px × 8
    assert (big["x0"], big["y0"], big["x1"], big["y1"], big["area"]) == (8, 2, 19, 5, 48)
    assert big["peak"] == pytest.approx(0.9) and big["mean"] == pytest.approx((0.5 * 5 + 0.9) / 6)
    assert (small["x0"], small["y0"], small["x1"], small["y1"], small["area"]) == (24, 12, 27, 13, 8)
    assert region_table(dmap, dmap > 0.3, [(8, 8), (8, 8)], min_area=2)[0][1:] == []
    flipped = region_table(dmap.flip(0), dmap.flip(0) > 0.3, [(8, 8), (16, 32)])  # only the 2nd image has any
    assert flipped[0] == [] and flipped[1] == out[0]


def test_pipeline_regions_locate_the_defect_in_original_pixels(tiny_model):
    pipe = Pipeline.from_artifact(tiny_model, device="cpu")
    yy, xx = np.mgrid[0:120, 0:200]
    img = 0.5 + 0.05 * np.sin(xx / 6.0)
    img = np.where((yy - 60) ** 2 + (xx - 150) ** 2 < 100, 0.02, img)
    arr = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
    pipe.pixel_threshold = float(pipe.score_arrays([arr]).scores[0]) * 0.6
    res = pipe.score_arrays([arr], want_regions=True)
    assert res.regions is not None and res.regions[0]
    top = max(res.regions[0], key=lambda r: r["peak"])
    assert top["x0"] <= 150 <= top["x1"] and top["y0"] <= 60 <= top["y1"]  # in the 200×120 frame, not 64×64
    assert 0 <= top["x0"] <= top["x1"] < 200 and 0 <= top["y0"] <= top["y1"] < 120


def test_score_writes_regions_masks_and_contours(tiny_model, synthetic_root, tmp_path):
    from click.testing import CliRunner

    from ear_stream.cli import main

    images = str(synthetic_root / "synthetic" / "test")
    res = CliRunner().invoke(main, ["score", images, "--model", str(tiny_model), "--out", str(tmp_path / "r"),
                                    "--save-maps", str(tmp_path / "maps"), "--threshold", "0.0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    table = read_results(tmp_path / "r")
    assert table["n_regions"].to_pylist() == [len(r) for r in table["regions"].to_pylist()]
    assert min(table["n_regions"].to_pylist()) >= 1  # threshold 0: every map has a region
    assert set(table["threshold"].to_pylist()) == {0.0}
    for kind in ("map", "mask", "contours"):
        assert len(list((tmp_path / "maps").glob(f"*_{kind}.png"))) == 16
