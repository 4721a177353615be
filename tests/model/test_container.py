"""The model container, the manifest's serialisation and the saliency registry.

The on-disk layout is a format: old model directories must keep loading, so the tests that pin it spell the key
names out literally instead of reading them from the code.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ear_stream.cli import main
from ear_stream.errors import ConfigError
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.model import reference
from ear_stream.model.artifact import (
    ArtifactError,
    Manifest,
    build_unet,
    load_artifact,
    load_manifest,
    save_artifact,
    sha256_file,
)
from ear_stream.model.config import GMS_C, SALIENCY_CHOICES, WEIGHT_FREE_SALIENCY, ModelConfig, ScoringConfig
from ear_stream.model.container import HEAD_PREFIX, ProductModel
from ear_stream.model.factory import build_model, load_model
from ear_stream.model.head import AnomalyHead
from ear_stream.model.registry import AUTO, SaliencySpec, register_spec, saliency_names, saliency_spec
from ear_stream.model.saliency import DinoAttention, build_dino, write_random_dino_checkpoint
from ear_stream.model.weightfree import create_saliency, weight_free_variants

README = Path(__file__).resolve().parents[2] / "README.md"


def _config(part: str) -> ModelConfig:
    """A 64-px fitted-saliency model scored by the learned head (``head``) or with a normal map (``normal_map``)."""
    return ModelConfig(image_size=64, saliency="stats", base_channels=4, head=part == "head", head_width=4,
                       saliency_params={"grid": 4}, scoring=ScoringConfig(normal_map=part == "normal_map"))  # fmt: skip


def _model(part: str) -> ProductModel:
    torch.manual_seed(0)
    model = build_model(_config(part))
    model.saliency.fit(torch.rand(8, 3, 64, 64))  # type: ignore[union-attr]
    if part == "normal_map":
        model.scoring.normal_map = torch.rand(1, 1, 64, 64)
    return model


def _every_part() -> ProductModel:
    """A container with all four parts (no config has both a head and a normal map; the container holds any)."""
    with_head = _model("head")
    return ProductModel(with_head.unet, with_head.saliency, with_head.anomaly_head, torch.rand(1, 1, 64, 64))


# ----------------------------------------------------------------------------- the container
def test_the_state_dict_is_the_file_layout():
    """U-Net keys at the root (as when the file held the U-Net alone), every other part under its attribute."""
    model = _every_part()
    keys = set(model.state_dict())
    unet_keys = set(build_unet(ModelConfig(image_size=64, base_channels=4)).state_dict())
    assert unet_keys <= keys and not any(k.startswith("unet.") for k in keys)
    assert {k for k in keys - unet_keys if not k.startswith("anomaly_head.")} == {
        "saliency.mean", "saliency.std", "scoring.normal_map"
    }  # fmt: skip
    assert HEAD_PREFIX == "anomaly_head." and {f"{HEAD_PREFIX}{k}" for k in AnomalyHead(4).state_dict()} <= keys
    assert list(model.state_dict())[: len(unet_keys)] == list(model.unet.state_dict())  # the U-Net first, in order


@pytest.mark.parametrize("part", ["head", "normal_map"])
def test_a_container_round_trips_its_state_exactly(part):
    model = _model(part)
    fresh = build_model(_config(part))
    fresh.load_stored(model.state_dict())
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("part", ["head", "normal_map"])
def test_a_pre_container_artifact_loads_part_by_part(tmp_path, part):
    """A weights file as every release before the container wrote it: U-Net keys bare, the rest prefixed."""
    cfg, fitted = _config(part), _model(part)
    unet, head = build_unet(cfg), AnomalyHead(4)
    state = {**unet.state_dict(), "saliency.mean": fitted.saliency.mean, "saliency.std": fitted.saliency.std}  # type: ignore[union-attr]
    if part == "head":
        state.update({f"anomaly_head.{k}": v for k, v in head.state_dict().items()})
    else:
        state["scoring.normal_map"] = torch.full((1, 1, 64, 64), 0.25)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    manifest = Manifest(config=cfg, threshold=0.5, weights_sha256=sha256_file(tmp_path / "weights.safetensors"))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest.to_json()))
    loaded, _ = load_model(tmp_path)
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in loaded.unet.state_dict().items())
    assert torch.equal(loaded.saliency.std, fitted.saliency.std)  # type: ignore[union-attr]
    if part == "head":
        assert all(torch.equal(v, head.state_dict()[k]) for k, v in loaded.anomaly_head.state_dict().items())  # type: ignore[union-attr]
    else:
        assert float(loaded.scoring.normal_map.mean()) == 0.25  # type: ignore[union-attr]


def test_a_missing_or_foreign_part_is_refused_by_name():
    state = _every_part().state_dict()
    with pytest.raises(ValueError, match="no head weights are stored"):
        build_model(_config("head")).load_stored({k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)})
    with pytest.raises(ValueError, match="subtracts a normal map, but none is stored"):
        build_model(_config("normal_map")).load_stored({k: v for k, v in state.items() if k != "scoring.normal_map"})
    with pytest.raises(ValueError, match="stored U-Net does not fit"):
        build_model(_config("head")).load_stored({**state, "encoders.9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"do not fit the model .*size mismatch for unet\.encoders.* more\)$"):
        build_model(dataclasses.replace(_config("head"), base_channels=8)).load_stored(state)
    # what a config does not use is left unread: every part's tensors read by a model with only a U-Net and saliency
    plain = build_model(_config("plain"))
    plain.load_stored(state)
    assert plain.anomaly_head is None
    assert torch.equal(plain.scoring.normal_map, state["scoring.normal_map"])  # type: ignore[arg-type]  # kept, unused


def test_dino_weights_stay_out_of_the_container(tmp_path):
    sal = DinoAttention(build_dino(write_random_dino_checkpoint(tmp_path / "dino.pth")))
    model = ProductModel(build_unet(ModelConfig(image_size=64, base_channels=4)), sal)
    assert not any(k.startswith("saliency.") for k in model.state_dict())
    before = sal.vit.patch_embed.proj.weight.clone()
    model.load_stored(model.state_dict())  # no ViT keys: the module keeps the weights it was built with
    assert torch.equal(sal.vit.patch_embed.proj.weight, before)


def test_a_trained_model_saves_its_container_and_the_pipeline_loads_it(tiny_model, tmp_path):
    pipe = Pipeline.from_artifact(tiny_model, device="cpu", precision="fp32")
    again = save_artifact(tmp_path / "again", pipe.model, load_manifest(tiny_model))
    assert sha256_file(again / "weights.safetensors") == sha256_file(tiny_model / "weights.safetensors")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(torch.as_tensor(pipe.score_tensor(x).scores),
                       torch.as_tensor(Pipeline.from_artifact(again, device="cpu", precision="fp32").score_tensor(x).scores))  # fmt: skip


# ----------------------------------------------------------------------------- the manifest
def test_the_manifest_is_its_fields_with_the_version_first(tiny_model):
    man = load_manifest(tiny_model)
    data = man.to_json()
    assert list(data)[:3] == ["format_version", "model_version", "config"]
    assert set(data) == {f.name for f in dataclasses.fields(Manifest)} | {"model_version"}
    assert Manifest.from_dict(json.loads(json.dumps(data))) == man
    assert json.loads((tiny_model / "manifest.json").read_text()) == data


def test_an_old_manifest_reads_with_what_its_absent_fields_meant(tiny_model):
    data = load_manifest(tiny_model).to_json()
    for key in ("threshold_policy", "pixel_policy", "pixel_threshold", "threshold_revision", "threshold_history"):
        data.pop(key)
    old = Manifest.from_dict({**data, "a_field_from_the_future": 1, "threshold": str(data["threshold"])})
    assert old.threshold_policy == "sigma:3"  # calibrated before policies were named: mean + 3·std
    assert (old.pixel_policy, old.pixel_threshold, old.threshold_revision, old.threshold_history) == (
        "image",
        None,
        0,
        [],
    )
    assert isinstance(old.threshold, float)
    with pytest.raises(TypeError):
        Manifest.from_dict({k: v for k, v in data.items() if k != "threshold"})


def test_an_artifact_without_a_part_it_needs_is_an_artifact_error(tiny_model, tmp_path):
    unet, manifest = load_artifact(tiny_model)
    manifest.config = dataclasses.replace(manifest.config, head=True)
    save_artifact(tmp_path / "m", unet, manifest)
    with pytest.raises(ArtifactError, match="no head weights are stored"):
        load_model(tmp_path / "m")


# ----------------------------------------------------------------------------- the saliency registry
def test_every_list_of_saliency_names_derives_from_the_registry():
    names = saliency_names()
    assert names == ("dino", "none", "binary", "spectral", "stats", "self")
    assert (AUTO, *names) == SALIENCY_CHOICES
    assert (
        set(WEIGHT_FREE_SALIENCY) == set(weight_free_variants()) == {n for n in names if saliency_spec(n).weight_free}
    )
    assert saliency_names(needs_dino=True) == ("dino", "binary") and saliency_names(two_pass=True) == ("self",)
    assert saliency_names(fitted=True) == ("stats",) and saliency_names(attention=False) == ("none",)
    for name in WEIGHT_FREE_SALIENCY:  # the classes take their traits from their spec
        module = create_saliency(name)
        assert (module.fitted, module.two_pass) == (saliency_spec(name).fitted, saliency_spec(name).two_pass)
    with pytest.raises(ConfigError, match="saliency must be one of"):
        saliency_spec("dino2")
    with pytest.raises(TypeError, match="unknown saliency traits"):
        saliency_names(shiny=True)


def test_the_cli_offers_and_explains_every_variant():
    out = CliRunner().invoke(main, ["train", "--help"], terminal_width=400).output
    flat = " ".join(out.split())
    assert "[" + "|".join(SALIENCY_CHOICES) + "]" in flat.replace(" | ", "|")
    for name in saliency_names():
        assert f"{name} = {' '.join(saliency_spec(name).summary.split())}" in flat


def test_the_readme_table_lists_every_variant_with_what_it_needs():
    text = README.read_text()
    table = text[text.index("| variant | needs |") :].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", table, flags=re.M))
    assert set(rows) == set(saliency_names())
    for name, needs in rows.items():
        spec = saliency_spec(name)
        assert ("DINO" in needs) == spec.needs_dino and ("fits on the training images" in needs) == spec.fitted


def test_a_variant_is_registered_once():
    with pytest.raises(ConfigError, match="already registered"):
        register_spec(SaliencySpec("spectral", "again"))


def test_gms_c_is_defined_once():
    assert ScoringConfig().c == GMS_C == reference.GMS_C
