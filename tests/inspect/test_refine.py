"""Learning from the line: ``refine`` (candidate, lineage, held-out comparison, resume) and ``promote``
(refuses worse, swaps atomically, the worker's registry picks it up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from ear_stream.cli import main
from ear_stream.inspect.checkpoint import load_checkpoint
from ear_stream.inspect.defect_bank import DefectBank, map_region
from ear_stream.inspect.labelled import LabelledSet, defect_type, held_out
from ear_stream.inspect.promotion import HeldOutFigures, refusal
from ear_stream.inspect.simulate import SimulatedBatch
from ear_stream.io.label_images import LabelImages
from ear_stream.io.labels import Label, LabelStore, Mask
from ear_stream.model.artifact import load_manifest, write_manifest
from ear_stream.model.deployment import VERSIONS, candidate_dir
from ear_stream.stream.models import ModelRegistry, check_models_dir

PRODUCT = "synthetic"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def labels(synthetic_root, tmp_path_factory) -> Path:
    """Every generated test image labelled (ids relative to test/), the defects with a brushed mask."""
    store_dir = tmp_path_factory.mktemp("refine-labels")
    test = synthetic_root / PRODUCT / "test"
    rows, masks = [], []
    for path in sorted(test.rglob("*.png")):
        kind = path.parent.name
        rows.append(Label(PRODUCT, str(path.relative_to(test)), "good" if kind == "good" else "defect"))
        gt = synthetic_root / PRODUCT / "ground_truth" / kind / f"{path.stem}_mask.png"
        masks.append(Mask.from_png(gt.read_bytes()) if kind != "good" and gt.is_file() else None)
    LabelStore(store_dir).add_many(rows, masks)
    return store_dir


def copy_models(headed: Path, tmp_path: Path) -> Path:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(headed, models, symlinks=True)
    return models


def refine_cli(models: Path, labels: Path, synthetic_root: Path, *extra: str) -> Result:
    return run("refine", models / PRODUCT, "--labels", labels, "--images", synthetic_root / PRODUCT / "test",
               "--max-steps", "3", "--no-progress", "--precision", "fp32", *extra)  # fmt: skip


def test_the_hold_out_is_a_stable_hash_and_types_come_from_the_folder():
    ids = [f"crack/{i:03d}.png" for i in range(400)]
    share = np.mean([held_out(PRODUCT, i, 0.3) for i in ids])
    assert 0.2 < share < 0.4
    assert held_out(PRODUCT, ids[7], 0.3) == held_out(PRODUCT, ids[7], 0.3)
    assert defect_type("crack/017.png") == "crack" and defect_type("1712-0") == "unlabelled"


def test_refine_writes_a_candidate_with_its_lineage_and_the_held_out_comparison(
    headed_models, labels, synthetic_root, tmp_path
):
    models = copy_models(headed_models, tmp_path)
    parent = load_manifest(models / PRODUCT)
    res = refine_cli(models, labels, synthetic_root)
    assert res.exit_code == 0, res.output
    assert "held-out labels, parent:" in res.output and "held-out labels, candidate:" in res.output
    cand = load_manifest(candidate_dir(models, PRODUCT))
    lin = cand.lineage
    assert lin["parent_version"] == parent.model_version and lin["parent_weights_sha256"] == parent.weights_sha256
    assert lin["labels"]["defect"] == 10 and lin["labels"]["good"] == 6 and lin["labels"]["with_mask"] == 10
    assert set(lin["labels"]["defect_types"]) <= {"blob", "scratch"}
    assert len(lin["labels_sha256"]) == 64
    held = lin["heldout"]
    assert held["parent"]["n_defect"] + held["parent"]["n_good"] == len(held["ids"]) > 0
    assert held["promotable"] == (held["refusal"] is None)
    assert cand.weights_sha256 != parent.weights_sha256
    assert cand.config.mosaic_scale == parent.config.mosaic_scale  # the parent's model, trained on
    assert not (models / PRODUCT).is_symlink()  # a candidate is not what the line runs


def test_labels_without_an_image_are_left_out_with_a_reason(labels, synthetic_root, tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.add(Label(PRODUCT, "good/0000.png", "good"))
    store.add(Label(PRODUCT, "nowhere/1.png", "defect"))
    store.add(Label(PRODUCT, "../../etc/passwd", "defect"))
    got = LabelledSet.load(store, PRODUCT, LabelImages(synthetic_root / PRODUCT / "test"), 64, 0.3)
    assert got.ids == ["good/0000.png"]
    assert "no image" in got.skipped["nowhere/1.png"] and "not a path inside" in got.skipped["../../etc/passwd"]


def test_the_defect_bank_pastes_confirmed_defects_where_simulated_ones_were():
    gen = torch.Generator().manual_seed(0)
    clean = torch.full((4, 3, 32, 32), 0.5)
    sim_mask = torch.zeros((4, 1, 32, 32))
    sim_mask[:2, :, 4:8, 4:8] = 1  # two items got a simulated defect, two did not
    sim = SimulatedBatch(clean + sim_mask * 0.2, sim_mask)
    bank_img = torch.full((1, 3, 32, 32), 0.8)
    bank_img[:, :, 10:20, 10:20] = 0.1
    region = torch.zeros((1, 1, 32, 32))
    region[:, :, 10:20, 10:20] = 1
    out = DefectBank(bank_img, region).paste(clean, sim, gen, share=1.0)
    assert torch.equal(out.images[2:], sim.images[2:]) and torch.equal(out.mask[2:], sim.mask[2:])
    for i in range(2):
        assert out.mask[i].sum() == 100  # the banked region (shifted, flipped), not the simulated one
        inside = out.images[i][:, out.mask[i][0] > 0]
        assert inside.mean() < 0.2  # dark defect on a 0.5 background: its contrast kept, its 0.8 background not
    maps = torch.rand((2, 1, 10, 10))
    assert map_region(maps).flatten(1).sum(1).tolist() == [2.0, 2.0]  # top 2 % of 100 pixels (at least 1)


def test_promotion_refuses_worse_and_unproven_candidates():
    parent = HeldOutFigures(1.0, 0.80, 2, 1, 5, 5)
    assert refusal(parent, HeldOutFigures(1.0, 0.90, 1, 1, 5, 5)) is None
    assert "ranks the held-out labels worse" in refusal(parent, HeldOutFigures(1.0, 0.70, 0, 0, 5, 5))
    assert "passes more of the held-out defects" in refusal(parent, HeldOutFigures(1.0, 0.85, 3, 0, 5, 5))
    assert "more mistakes" in refusal(parent, HeldOutFigures(1.0, 0.85, 1, 3, 5, 5))
    assert "nothing shows" in refusal(parent, HeldOutFigures(1.0, None, 0, 0, 0, 5))
    assert "nothing shows" in refusal(parent, HeldOutFigures(1.0, 0.9, 0, 0, 2, 5))  # two defects: no evidence


def forge(cand_dir: Path, **heldout) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the candidate's stored held-out comparison (what promote recomputes its figures from)."""
    cand = load_manifest(cand_dir)
    cand.lineage = {**cand.lineage, "heldout": {**cand.lineage["heldout"], **heldout}}
    write_manifest(cand_dir, cand)


def test_promote_swaps_atomically_the_registry_reloads_and_worse_is_refused(
    headed_models, labels, synthetic_root, tmp_path
):
    models = copy_models(headed_models, tmp_path)
    registry = ModelRegistry(models, "cpu", None, reload_every_s=0.0, precision="fp32")
    before = registry.get(PRODUCT).model_version
    assert refine_cli(models, labels, synthetic_root).exit_code == 0
    cand_dir = candidate_dir(models, PRODUCT)
    threshold = load_manifest(cand_dir).threshold
    parent_thr = load_manifest(models / PRODUCT).threshold
    defect = [True] * 4 + [False] * 4
    # worse on the held-out labels: the figures come from the stored scores, at each model's threshold
    forge(cand_dir, defect=defect, parent_scores=[parent_thr + 1] * 4 + [parent_thr - 1] * 4,
          candidate_scores=[threshold - 1] * 4 + [threshold - 2] * 4)  # fmt: skip
    res = run("promote", PRODUCT, "--models", models)
    assert res.exit_code == 1 and "passes more of the held-out defects" in res.output and "4/4 escapes" in res.output
    assert not (models / PRODUCT).is_symlink() and not list((models / VERSIONS / PRODUCT).glob("*/manifest.json"))
    # a malformed or missing comparison: one line, nothing moved
    for bad in ({"defect": "yes"}, {"parent_scores": [1.0]}, {"candidate_scores": ["0.5"] * 8}):
        forge(cand_dir, defect=defect, parent_scores=[0.0] * 8, candidate_scores=[0.0] * 8)
        forge(cand_dir, **bad)
        res = run("promote", PRODUCT, "--models", models)
        assert res.exit_code == 1 and "malformed" in res.output, res.output
    # no worse: promoted
    forge(cand_dir, defect=defect, parent_scores=[parent_thr + 1] * 2 + [parent_thr - 1] * 6,
          candidate_scores=[threshold + 1] * 4 + [threshold - 1] * 4)  # fmt: skip
    cand = load_manifest(cand_dir)
    res = run("promote", PRODUCT, "--models", models)
    assert res.exit_code == 0, res.output
    link = models / PRODUCT
    assert link.is_symlink() and load_manifest(link).model_version == cand.model_version
    kept = sorted(p.name for p in (models / VERSIONS / PRODUCT).iterdir() if not p.name.startswith("."))
    assert kept == sorted([before, cand.model_version])  # the parent is kept to roll back to
    assert not cand_dir.exists()  # promoted: no longer a candidate (the shadow stops scoring it)
    assert not (link / "checkpoint.pt").exists() and not (link / "refine-state.json").exists()
    time.sleep(0.01)
    assert registry.get(PRODUCT).model_version == cand.model_version != before
    assert registry.reload_errors == {}
    assert check_models_dir(models) == [PRODUCT]  # .versions and .candidates are no products
    # promoting what runs, or a version without lineage without --rollback, is refused; --rollback returns
    res = run("promote", PRODUCT, "--models", models, "--candidate", link.resolve())
    assert res.exit_code == 1 and "already runs" in res.output
    parent_dir = models / VERSIONS / PRODUCT / before
    res = run("promote", PRODUCT, "--models", models, "--candidate", parent_dir)
    assert res.exit_code == 1 and "--rollback" in res.output
    res = run("promote", PRODUCT, "--models", models, "--rollback", "--candidate", parent_dir)
    assert res.exit_code == 0, res.output
    assert load_manifest(link).model_version == before
    # a candidate refined from a model the line no longer runs is refused
    assert refine_cli(models, labels, synthetic_root, "--max-steps", "2").exit_code == 0
    res = run("promote", PRODUCT, "--models", models, "--rollback", "--candidate",
              models / VERSIONS / PRODUCT / cand.model_version)  # fmt: skip
    assert res.exit_code == 0
    res = run("promote", PRODUCT, "--models", models)
    assert res.exit_code == 1 and "refine again from the model the line runs" in res.output


def test_sigkill_during_refine_then_resume_finishes(headed_models, labels, synthetic_root, tmp_path):
    models = copy_models(headed_models, tmp_path)
    out = tmp_path / "cand"
    cmd = [sys.executable, "-m", "ear_stream.cli", "refine", str(models / PRODUCT), "--labels", str(labels),
           "--images", str(synthetic_root / PRODUCT / "test"), "--out", str(out), "--max-steps", "120",
           "--checkpoint-minutes", "0.002", "--no-progress", "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").is_file() and not (out / "manifest.json").is_file()
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 0 < step < 120
    # another label set cannot be resumed into this run
    other = tmp_path / "other-labels"
    LabelStore(other).add_many([Label(PRODUCT, f"good/{i:04d}.png", "good") for i in range(6)])
    res = run("refine", models / PRODUCT, "--labels", other, "--images", synthetic_root / PRODUCT / "test",
              "--out", out, "--max-steps", "120", "--no-progress", "--resume")  # fmt: skip
    assert res.exit_code == 1 and "no refinement of this parent on these labels" in res.output
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = load_manifest(out)
    assert manifest.training["steps"] == 120 and manifest.training["resumed"] is True
    assert json.loads((out / "refine-state.json").read_text())["labels_sha256"] == manifest.lineage["labels_sha256"]


def test_label_images_come_from_a_folder_uri_or_the_kept_store(synthetic_root, tmp_path):
    from ear_stream.io.keeping import ImageKeeper, KeepPolicy
    from ear_stream.io.results import ResultWriter, now_utc, verdict_row

    test = synthetic_root / PRODUCT / "test"
    data = (test / "good" / "0000.png").read_bytes()
    assert LabelImages(test.as_uri()).read("good/0000.png") == data  # a pyarrow filesystem URI
    uri_images = LabelImages(test.as_uri())
    assert uri_images.read("good/none.png") is None and "no image" in uri_images.missing["good/none.png"]
    # the line's way: the id's row in the results names the kept blob
    keeper = ImageKeeper(KeepPolicy(str(tmp_path / "kept"), 1.0))
    row = verdict_row(id="item-1", product=PRODUCT, score=1.0, normalized_score=1.0, is_anomaly=True, threshold=0.5,
                      mask_ratio=0.1, mosaic_scale=8, model_version="v", worker="w", processed_at=now_utc())  # fmt: skip
    keeper.keep(row, data)
    keeper.settle()
    writer = ResultWriter(tmp_path / "results", "w")
    writer.write([row])
    kept = LabelImages(None, tmp_path / "results", PRODUCT)
    assert kept.read("item-1") == data
    assert kept.read("item-2") is None and "no kept image" in kept.missing["item-2"]
