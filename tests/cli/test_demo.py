"""The demo shows the method: its model recovers its textures and catches its defects."""

from __future__ import annotations

import numpy as np
import pytest

from ear_stream.cli.demo import DEMO_EPOCHS, PRODUCT, ensure_model
from ear_stream.inspect.evaluation import evaluate
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.model.artifact import load_manifest

pytestmark = pytest.mark.slow


def test_the_demo_model_recovers_and_catches_its_defects(tmp_path):
    model = ensure_model(tmp_path, DEMO_EPOCHS, 64)
    recovery = load_manifest(model).training["recovery"]
    # the recovered column shows texture: error well under a flat image's, no colour cast to speak of
    assert recovery["ratio_to_flat"] < 0.5 and not recovery["degenerate"], recovery
    pipe = Pipeline.from_artifact(model, device="cpu")
    result, material = evaluate(pipe, tmp_path / "data", PRODUCT, progress=False)
    labels = material["labels"]
    flagged = ~(result.scores <= pipe.threshold)
    assert flagged[labels].mean() >= 0.9 and flagged[~labels].mean() <= 0.05, (
        flagged[labels].mean(),
        flagged[~labels].mean(),
    )
    assert np.isfinite(result.scores).all()
