"""The U-Net's numeric path: run-time choice, bf16 really running, parity with fp32, compile without recompiles."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import load_tensor
from ear_stream.io.datasets import test_samples as labelled_samples
from ear_stream.model import precision as prec
from ear_stream.model.config import ModelConfig, TrainConfig


def test_auto_follows_the_bf16_units_the_machine_reports(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: False)
    assert prec.resolve_precision("auto", "cpu") == prec.Precision("fp32", "cpu", channels_last=True)
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: True)
    assert prec.resolve_precision("auto", "cpu").name == "bf16"
    assert prec.resolve_precision("auto", "cuda").name == "bf16"
    assert prec.resolve_precision("fp32", "cuda").name == "fp32"


def test_int8_and_unknown_precisions_are_refused_clearly():
    with pytest.raises(prec.PrecisionUnavailable, match="int8 is not offered"):
        prec.resolve_precision("int8", "cpu")
    with pytest.raises(prec.PrecisionUnavailable, match="precision must be one of"):
        prec.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")


def _conv_output_dtypes(pipe: Pipeline, images: torch.Tensor) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in pipe.unet.modules()
             if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    pipe.score_tensor(images)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_the_pipeline_runs_the_unet_on_the_path_it_names(tiny_model, name):
    pipe = Pipeline.from_artifact(tiny_model, device="cpu", precision=name)
    images = torch.rand((2, 3, 64, 64))
    expected = torch.bfloat16 if name == "bf16" else torch.float32
    assert _conv_output_dtypes(pipe, images) == {expected}
    assert pipe.unet.encoders[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    res = pipe.score_tensor(images)
    assert res.scores.dtype == np.float32 and np.isfinite(res.scores).all()


def test_training_records_its_precision_and_runs_bf16(synthetic_root, tmp_path):
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8)
    out = train_model(synthetic_root, "synthetic", tmp_path / "m", cfg,
                      TrainConfig(batch_size=4, precision="bf16"), max_steps=2, progress=False)  # fmt: skip
    training = json.loads((out / "manifest.json").read_text())["training"]
    assert training["precision"] == "bf16 autocast, channels_last"


def _real_subset(real_data):
    """Magnetic Tile test images picked by name (a SHA-1 rule on the file name): ~1 in 6 of each kind."""
    return [s for s in labelled_samples(real_data, "magnetic_tile")
            if int(hashlib.sha1(s.path.name.encode()).hexdigest()[:4], 16) % 6 == 0]  # fmt: skip


def test_bf16_scores_agree_with_fp32_on_real_images(real_data, tmp_path):
    cfg = ModelConfig(image_size=64, saliency="spectral", base_channels=8)
    out = train_model(real_data, "magnetic_tile", tmp_path / "m", cfg, TrainConfig(batch_size=8, lr=1e-3),
                      max_steps=40, progress=False)  # fmt: skip
    samples = _real_subset(real_data)
    labels = np.array([s.defect != "good" for s in samples])
    assert labels.sum() >= 10 and (~labels).sum() >= 10
    images = load_tensor([s.path for s in samples], 64, progress=False)
    scores = {}
    for name in ("fp32", "bf16"):
        pipe = Pipeline.from_artifact(out, device="cpu", precision=name)
        scores[name] = np.concatenate([pipe.score_tensor(images[i : i + 32]).scores for i in range(0, len(images), 32)])
    rel = np.abs(scores["bf16"] - scores["fp32"]) / np.abs(scores["fp32"]).clip(1e-6)
    assert np.median(rel) < 0.01 and rel.max() < 0.1  # the tolerance stated in docs/design.md
    auroc = {k: roc_auc_score(labels, v) for k, v in scores.items()}
    print(f"bf16 vs fp32: median relative score difference {np.median(rel):.4f}, max {rel.max():.4f}, AUROC {auroc}")
    assert abs(auroc["bf16"] - auroc["fp32"]) <= 0.02, auroc


def test_a_compiled_pipeline_serves_every_batch_size_with_one_graph(tiny_model, monkeypatch):
    monkeypatch.setenv("EAR_STREAM_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    graphs = []
    original = torch.compile

    def recording_compile(module, backend, dynamic=None):  # type: ignore[no-untyped-def]
        return original(module, dynamic=dynamic, backend=lambda gm, ex: (graphs.append(backend), gm.forward)[1])

    monkeypatch.setattr(torch, "compile", recording_compile)
    pipe = Pipeline.from_artifact(tiny_model, device="cpu", precision="fp32", compile=True)
    eager = Pipeline.from_artifact(tiny_model, device="cpu", precision="fp32")
    pipe.warm_up((1, 2))
    after_warm_up = len(graphs)
    for b in (3, 5, 1, 7):
        x = torch.rand((b, 3, 64, 64))
        np.testing.assert_allclose(pipe.score_tensor(x).scores, eager.score_tensor(x).scores, rtol=1e-4, atol=1e-5)
    assert after_warm_up >= 1 and len(graphs) == after_warm_up  # no batch size recompiled after the warm-up
