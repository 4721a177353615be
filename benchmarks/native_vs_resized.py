"""Native-resolution crops + tiles vs whole images resized to 128 px, same model, same wall-clock budget.

    python benchmarks/native_vs_resized.py ../shared/data --category magnetic_tile --minutes 55

Two children train at the same time on one thread each (``resized``: every image
squashed to 128×128; ``native``: random 128×128 crops of images at ``--scale``,
inspected over overlapping 128-px tiles), with the same U-Net, saliency (spectral),
seed, batch and learning rate, and default scoring (nothing is tuned here). Both
are then scored on the study's reported subset (the salted split of
``benchmarks/study.py``; the validation images are left out). Pixel AUROC is given
twice: at each model's own map resolution, and at native resolution for both (the
128-px map upsampled to the ground-truth mask's size), the fair comparison.
Writes OUT/native_vs_resized.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

VARIANTS = {
    "resized": {},
    "native": {"scale": 1.0},
}


def run_child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(Path(__file__).parent))
    from study import split_of

    from ear_stream.inspect.evaluation import compute_metrics, evaluate
    from ear_stream.inspect.pipeline import Pipeline, load_images, select
    from ear_stream.inspect.training import train_model
    from ear_stream.io.datasets import load_mask, test_samples
    from ear_stream.model.config import ModelConfig, TrainConfig

    name = args.child
    out = args.out / name
    cfg = ModelConfig(image_size=args.image_size, saliency="spectral", base_channels=args.width, **VARIANTS[name])
    tcfg = TrainConfig(epochs=100_000, batch_size=args.batch_size, lr=args.lr, seed=0, checkpoint_minutes=10.0)
    t0 = time.perf_counter()
    if not args.rescore:
        train_model(
            args.data_root,
            args.category,
            out,
            cfg,
            tcfg,
            max_minutes=args.minutes,
            curve_every_minutes=10.0,
            progress=False,
            resume=args.resume,
        )
    train_s = time.perf_counter() - t0
    pipe = Pipeline.from_artifact(out, device="cpu")
    samples = test_samples(args.data_root, args.category)
    keep = [i for i, s in enumerate(samples) if split_of(s.path, 0.2) == "test"]
    samples = [samples[i] for i in keep]
    images = load_images(pipe.config, [s.path for s in samples], progress=False)
    t1 = time.perf_counter()
    res, mat = evaluate(
        pipe, args.data_root, args.category, batch_size=8, progress=False, samples=samples, images=images
    )
    score_s = time.perf_counter() - t1
    # pixel AUROC at native resolution for both models: maps brought to the ground truth's size
    gts, preds = [], []
    for s, m in zip(samples, mat["maps"], strict=True):
        w, h = Image.open(s.path).size
        gt = load_mask(s.mask_path, (h, w))
        m = m.float()[None]
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        gts.append(gt.flatten().numpy())
        preds.append(m.flatten().numpy())
    gt, pred = np.concatenate(gts), np.concatenate(preds)
    if gt.size > 20_000_000:
        idx = np.random.default_rng(0).choice(gt.size, 20_000_000, replace=False)
        gt, pred = gt[idx], pred[idx]
    manifest = json.loads((out / "manifest.json").read_text())
    small = [s for s in samples if s.defect in ("blowhole", "crack", "good")]
    sel = [i for i, s in enumerate(samples) if s in small]
    small_res = compute_metrics(small, res.scores[sel], select(mat["maps"], sel), pipe.threshold, 0.0)
    row = {
        "variant": name,
        "config": {
            "image_size": cfg.image_size,
            "scale": pipe.config.scale,
            "tile": pipe.config.tile,
            "tile_overlap": pipe.config.tile_overlap,
            "m": pipe.config.mosaic_scale,
        },
        "steps": manifest["training"]["steps"],
        "train_s": round(train_s, 1),
        "score_s": round(score_s, 1),
        "ms_per_image": round(1000 * score_s / len(samples), 1),
        "image_auroc": res.image_auroc,
        "pixel_auroc_own_res": res.pixel_auroc,
        "pixel_auroc_native": float(roc_auc_score(gt, pred)),
        "per_defect": {d: v["image_auroc"] for d, v in res.per_defect.items()},
        "small_defects_image_auroc": small_res.image_auroc,
        "n_test": len(samples),
    }
    (args.out / f"{name}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row), flush=True)


def summary(args: argparse.Namespace) -> None:
    rows = [json.loads((args.out / f"{v}.json").read_text()) for v in VARIANTS if (args.out / f"{v}.json").exists()]
    defects = sorted({d for r in rows for d in r["per_defect"]})
    head = (
        "| model | steps | image AUROC | blowhole+crack | pixel AUROC (own res) | pixel AUROC (native) | "
        + " | ".join(defects)
        + " | ms/image |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per = " | ".join(f"{r['per_defect'][d]:.3f}" for d in defects)
        lines.append(
            f"| {r['variant']} | {r['steps']} | {r['image_auroc']:.3f} | {r['small_defects_image_auroc']:.3f} | "
            f"{r['pixel_auroc_own_res']:.3f} | {r['pixel_auroc_native']:.3f} | {per} | {r['ms_per_image']} |"
        )
    text = "\n".join(lines)
    (args.out / "native_vs_resized.md").write_text(text + "\n")
    (args.out / "native_vs_resized.json").write_text(json.dumps(rows, indent=2))
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/native"))
    p.add_argument("--minutes", type=float, default=55.0, help="training budget per model (both run at once)")
    p.add_argument("--image-size", type=int, default=128, help="resize side, and the crop/tile side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rescore", action="store_true", help="score the models already in OUT")
    p.add_argument("--resume", action="store_true", help="continue killed runs from their checkpoints")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        run_child(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for v in VARIANTS:
        log = open(args.out / f"{v}.log", "w")  # noqa: SIM115 - closed with the child
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, __file__, *sys.argv[1:], "--child", v],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    codes = [p.wait() for p, _ in procs]
    for _, log in procs:
        log.close()
    if any(codes):
        sys.exit(f"a child failed (exit codes {codes}); see {args.out}/*.log")
    summary(args)


if __name__ == "__main__":
    main()
