"""The reference ops against independent hand derivations (docs/design.md, "Numerics")."""

from __future__ import annotations

import math

import pytest
import torch

from ear_stream.model import reference as ref


def test_constant_images_score_zero():
    x = torch.full((2, 3, 40, 40), 0.3)
    score, dmap = ref.msgms_reference(x, x.clone(), want_map=True)
    assert torch.allclose(score, torch.zeros(2), atol=1e-7)
    assert dmap.shape == (2, 1, 40, 40)


def test_identical_textured_images_score_zero():
    x = torch.rand(1, 3, 33, 47)
    score, _ = ref.msgms_reference(x, x.clone())
    assert score.item() == pytest.approx(0.0, abs=1e-6)


def test_prewitt_step_edge_magnitude():
    # vertical step 0 -> 1 between columns 4 and 5: gx = (3 * 1) / 3 = 1 on both sides of the step
    x = torch.zeros(1, 1, 8, 10)
    x[..., 5:] = 1.0
    g = ref.prewitt_magnitude(x)
    assert g[0, 0, 3, 4].item() == pytest.approx(1.0, abs=1e-5)
    assert g[0, 0, 3, 5].item() == pytest.approx(1.0, abs=1e-5)
    assert g[0, 0, 3, 2].item() == pytest.approx(math.sqrt(1e-12), abs=1e-7)
    # replicate padding: the border column sees no edge
    assert g[0, 0, 0, 0].item() < 1e-5


def test_gms_distance_known_value():
    a = torch.zeros(1, 1, 6, 6)
    a[..., 3:] = 1.0
    b = a * 0.5  # gradient magnitudes 1 and 0.5 at the edge
    d = ref.gms_distance(a, b)
    c = ref.GMS_C
    expected = 1 - (2 * 1 * 0.5 + c) / (1 + 0.25 + c)
    assert d[0, 0, 2, 2].item() == pytest.approx(expected, abs=1e-5)


def test_tile_means_5x5_m2():
    x = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    got = ref.tile_means(x, 2)[0, 0]
    # tiles: rows {0,1},{2,3},{4}; cols {0,1},{2,3},{4}; partial tiles average in-bounds pixels only
    assert got[0, 0].item() == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert got[1, 1].item() == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert got[0, 4].item() == pytest.approx((4 + 9) / 2)
    assert got[4, 4].item() == pytest.approx(24.0)
    assert got[4, 0].item() == pytest.approx((20 + 21) / 2)
    assert got[2, 3].item() == pytest.approx((12 + 13 + 17 + 18) / 4)


def test_q3_threshold_population_std():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    mean, std = 2.5, math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 4)
    assert ref.q3_threshold(a).item() == pytest.approx(mean + 0.674 * std, abs=1e-6)


def test_saliency_mask_nearest_rule():
    a = torch.zeros(1, 3, 3)
    a[0, 1, 2] = 1.0  # only one cell above the Q3 threshold
    mask = ref.saliency_mask(a, (7, 7))[0, 0]
    rows = [y for y in range(7) if math.floor(y * 3 / 7) == 1]
    cols = [x for x in range(7) if math.floor(x * 3 / 7) == 2]
    expected = torch.zeros(7, 7)
    expected[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = 1
    assert torch.equal(mask, expected)


def test_excise_composes_mosaic_only_inside_mask():
    x = torch.rand(1, 3, 8, 8)
    a = torch.zeros(1, 2, 2)
    a[0, 0, 0] = 1.0  # top-left quarter masked
    comp, ratio = ref.excise_reference(x, a, 4)
    assert ratio.item() == pytest.approx(0.25)
    assert torch.allclose(comp[..., 4:, :], x[..., 4:, :])
    assert torch.allclose(comp[..., :4, :4], x[..., :4, :4].mean(dim=(-1, -2), keepdim=True).expand(1, 3, 4, 4))
    binary, _ = ref.excise_reference(x, a, 4, hint=False)
    assert torch.count_nonzero(binary[..., :4, :4]) == 0
    full, ratio = ref.excise_reference(x, None, 4)
    assert ratio.item() == 1.0 and torch.allclose(full, ref.tile_means(x, 4))


def test_median_and_box_filter():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 9.0  # an isolated spike disappears under a 3x3 median
    assert ref.median3x3(x).abs().max().item() == 0.0
    ones = torch.ones(1, 1, 6, 7)
    assert torch.allclose(ref.box_filter(ones, 5), ones)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 9.0
    assert ref.box_filter(spike, 3)[0, 0, 4, 4].item() == pytest.approx(1.0)
    assert ref.box_filter(spike, 1) is spike


def test_msgms_upsamples_coarse_scales_bilinearly():
    torch.manual_seed(0)
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    d1 = ref.gms_distance(ref.pool_pow2(x, 1), ref.pool_pow2(y, 1), median=False)
    up = torch.nn.functional.interpolate(d1, size=(16, 16), mode="bilinear", align_corners=False)
    d0 = ref.gms_distance(x, y, median=False)
    got = ref.msgms_map_reference(x, y, scales=2, median=False, box=1)
    assert torch.allclose(got, (d0 + up) / 2, atol=1e-6)


def test_losses_are_bounded_and_zero_for_identity():
    x = torch.rand(2, 3, 32, 32)
    assert ref.ssim(x, x).item() == pytest.approx(1.0, abs=1e-4)
    assert ref.msgms_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ref.combined_loss(x, x).item() == pytest.approx(0.0, abs=1e-4)
    y = torch.rand(2, 3, 32, 32)
    loss = ref.combined_loss(x, y)
    assert 0 < loss.item() < 5
    assert ref.lamp(torch.tensor(1.0)).isfinite()
    assert ref.lamp(torch.tensor(0.5)).item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.rand(3, 8, 8), None, 2), "rank"),
        ((torch.rand(1, 3, 8, 8), None, 0), "m must be >= 1"),
        ((torch.rand(1, 3, 8, 8), torch.rand(2, 4, 4), 2), "batch"),
        ((torch.randint(0, 9, (1, 3, 8, 8)), None, 2), "floating"),
    ],
)
def test_excise_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        ref.excise_reference(*args)


def test_msgms_rejects_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        ref.msgms_reference(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="too small"):
        ref.msgms_reference(torch.rand(1, 3, 3, 8), torch.rand(1, 3, 3, 8), scales=3)
    with pytest.raises(ValueError, match="odd"):
        ref.msgms_reference(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), box=4)
