"""Fail closed on frames the model cannot judge: noise, blank, saturated, inverted and foreign images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ear_stream.inspect.ood import FEATURES, OOD_MIN_BOUND, OOD_REASON, OODCheck, image_features
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.scoring import result_rows
from ear_stream.io import datasets
from ear_stream.model.artifact import load_manifest

SIZE = 64


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """A stand-in recovery (what a U-Net does to a good part: keep it, lose the finest detail)."""
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def dark_product(n: int, seed: int) -> torch.Tensor:
    """A dark surface with bright speckle, under slightly varying light: inverting it is not a part."""
    g = torch.Generator().manual_seed(seed)
    base = 0.15 + 0.05 * torch.rand(n, 1, 1, 1, generator=g)
    speckle = (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.97).float() * 0.5
    texture = 0.03 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return (base + F.avg_pool2d(speckle + texture, 3, 1, 1)).clamp(0, 1).expand(n, 3, SIZE, SIZE).contiguous()


@pytest.fixture(scope="module")
def check() -> OODCheck:
    held = dark_product(20, seed=0)
    return OODCheck.fit(image_features(held, _smooth(held)))


def _flagged(check: OODCheck, x: torch.Tensor, recon: torch.Tensor | None = None) -> list[str | None]:
    return check.reasons(image_features(x, _smooth(x) if recon is None else recon))


def test_new_good_parts_are_not_flagged(check):
    good = dark_product(200, seed=1)
    assert _flagged(check, good) == [None] * 200
    z = check.deviations(image_features(good, _smooth(good))).max(1)
    assert z.max() < check.bound / 2, (z.max(), check.bound)  # with margin, not at the edge


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("noise", lambda: torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))),
        ("flat", lambda: torch.full((6, 3, SIZE, SIZE), 0.18)),
        ("saturated", lambda: torch.ones(6, 3, SIZE, SIZE)),
        ("black", lambda: torch.zeros(6, 3, SIZE, SIZE)),
        ("inverted", lambda: 1 - dark_product(6, seed=2)),
        ("foreign colour scene", lambda: F.interpolate(torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(4)), size=(SIZE, SIZE), mode="bilinear")),
        ("wrong scale (zoomed in)", lambda: F.interpolate(dark_product(6, seed=5)[:, :, :12, :12], size=(SIZE, SIZE), mode="bilinear")),
    ],
)  # fmt: skip
def test_frames_that_are_not_the_product_are_flagged(check, name, frames):
    reasons = _flagged(check, frames())
    assert all(r is not None and r.startswith(OOD_REASON) for r in reasons), (name, reasons)


def test_a_frame_the_model_cannot_recover_is_flagged(check):
    good = dark_product(4, seed=6)
    assert all(_flagged(check, good, recon=torch.full_like(good, 0.9)))
    assert all(_flagged(check, good, recon=torch.full_like(good, float("nan"))))


def test_the_check_round_trips_through_the_manifest_and_refuses_junk(check):
    again = OODCheck.from_calibration({"ood": check.to_json()})
    assert again is not None and again.bound == check.bound and np.allclose(again.center, check.center)
    assert check.bound >= OOD_MIN_BOUND
    for junk in (
        {},
        {"ood": None},
        {"ood": {"features": ["x"]}},
        {"ood": {**check.to_json(), "spread": [0] * len(FEATURES)}},
    ):
        assert OODCheck.from_calibration(junk) is None  # an older or damaged calibration: no check, no crash


def test_the_trained_model_flags_noise_and_blank_frames_and_passes_its_good_images(tiny_model, synthetic_root):
    pipe = Pipeline.from_artifact(tiny_model, device="cpu", precision="fp32")
    assert "ood" in load_manifest(tiny_model).calibration and pipe.ood_check is not None
    good = [s.path for s in datasets.test_samples(synthetic_root, "synthetic") if s.defect == "good"]
    res = pipe.score_images(datasets.load_tensor(good, SIZE, progress=False))
    assert res.ood == [None] * len(good)
    junk = torch.cat(
        [torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)), torch.full((1, 3, SIZE, SIZE), 0.5)]
    )
    res = pipe.score_images(junk)
    assert res.is_anomaly.all() and all(r and r.startswith(OOD_REASON) for r in res.ood), res.ood  # type: ignore[union-attr]
    rows = result_rows(pipe, res, ["n0", "n1", "flat"], "synthetic", "test", [{"frame_check": None}] * 3)
    assert all(r["is_anomaly"] and r["frame_check"].startswith(OOD_REASON) for r in rows)
