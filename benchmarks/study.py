"""Quality and speed study: EAR variants vs the RIAD baseline on one MVTec-layout category.

Trains every variant with the same U-Net, image size, epochs and seed, evaluates
them (image/pixel AUROC, per-defect AUROC), and times inference in this process
(ms/image at batch 1, images/s at batch 32); then sweeps the mosaic scale m for
``ear/none`` and marks the r10 estimate m̂. ``ear/binary`` and ``ear/dino`` run
only when a DINO checkpoint is given. Writes OUT/study.md and OUT/study.json.

    python benchmarks/study.py ../shared/data --category magnetic_tile --image-size 128 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ear_stream.inspect.evaluation import evaluate, write_report
from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.training import estimate_mosaic_scale, train_model
from ear_stream.io.datasets import load_tensor, test_samples, train_images
from ear_stream.model.config import ModelConfig, TrainConfig
from ear_stream.model.mosaic_scale import MosaicEstimator


def time_inference(pipe: Pipeline, images: torch.Tensor) -> tuple[float, float]:
    """(median ms/image at batch 1, images/s at batch 32) on the given test images."""
    pipe.score_tensor(images[:1])  # warm-up
    singles = []
    for i in range(min(16, images.shape[0])):
        t0 = time.perf_counter()
        pipe.score_tensor(images[i : i + 1])
        singles.append((time.perf_counter() - t0) * 1000)
    batch = images[:64] if images.shape[0] >= 64 else images
    t0 = time.perf_counter()
    for i in range(0, batch.shape[0], 32):
        pipe.score_tensor(batch[i : i + 32])
    return statistics.median(singles), batch.shape[0] / (time.perf_counter() - t0)


def run_variant(name, cfg, args, out: Path, m: int | None, images: torch.Tensor) -> dict:
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    t0 = time.perf_counter()
    model = train_model(
        args.data_root,
        args.category,
        out / name.replace("/", "_"),
        cfg,
        tcfg,
        mosaic_scale=m,
        dino_weights=args.dino_weights,
        device=args.device,
        progress=False,
    )
    train_s = time.perf_counter() - t0
    pipe = Pipeline.from_artifact(model, device=args.device, dino_weights=args.dino_weights)
    res, material = evaluate(pipe, args.data_root, args.category, progress=False)
    write_report(out / f"{name.replace('/', '_')}.html", pipe, res, material, f"{name}: {args.category}")
    ms1, ips = time_inference(pipe, images)
    row = {
        "variant": name,
        "m": pipe.config.mosaic_scale,
        "image_auroc": res.image_auroc,
        "pixel_auroc": res.pixel_auroc,
        "per_defect": {d: v["image_auroc"] for d, v in res.per_defect.items()},
        "train_s": train_s,
        "ms_per_image_b1": ms1,
        "images_per_s_b32": ips,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dino-weights", type=Path, default=None)
    p.add_argument("--sweep", default="2,4,8,16,32,64", help="mosaic scales for the ear/none sweep ('' to skip)")
    p.add_argument("--sweep-epochs", type=int, default=None, help="epochs per sweep model (default: --epochs)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    test_images = load_tensor(
        [s.path for s in test_samples(args.data_root, args.category)][:64], args.image_size, progress=False
    )
    base = {"image_size": args.image_size, "base_channels": args.width}
    variants = [("ear/none", ModelConfig(saliency="none", **base), None)]
    if args.dino_weights:
        variants += [
            ("ear/binary", ModelConfig(saliency="binary", **base), None),
            ("ear/dino", ModelConfig(saliency="dino", **base), None),
        ]
    variants.append(("riad", ModelConfig(method="riad", **base), 16))
    rows = [run_variant(name, cfg, args, args.out, m, test_images) for name, cfg, m in variants]

    sweep = []
    m_hat = None
    if args.sweep:
        train = load_tensor(train_images(args.data_root, args.category), args.image_size, progress=False)
        m_hat, r10_value = estimate_mosaic_scale(train, None, MosaicEstimator())
        sweep_args = argparse.Namespace(**{**vars(args), "epochs": args.sweep_epochs or args.epochs})
        for m in [int(v) for v in args.sweep.split(",")]:
            row = run_variant(f"sweep_m{m}", ModelConfig(saliency="none", **base), sweep_args, args.out, m, test_images)
            sweep.append({"m": m, "image_auroc": row["image_auroc"], "pixel_auroc": row["pixel_auroc"]})

    ear = next(r for r in rows if r["variant"] == "ear/none")
    riad = next(r for r in rows if r["variant"] == "riad")
    lines = [
        f"Category `{args.category}`, {args.image_size} px, {args.epochs} epochs, width {args.width}, "
        f"lr {args.lr}, seed {args.seed}, device {args.device}, torch threads {torch.get_num_threads()}",
        "",
        "| variant | m | image AUROC | pixel AUROC | train s | ms/image (b=1) | images/s (b=32) | per-defect image AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"{d} {v:.3f}" for d, v in r["per_defect"].items())
        lines.append(
            f"| {r['variant']} | {r['m']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
            f"{r['train_s']:.0f} | {r['ms_per_image_b1']:.1f} | {r['images_per_s_b32']:.1f} | {per} |"
        )
    lines += [
        "",
        f"RIAD / EAR inference time per image: batch 1 {riad['ms_per_image_b1'] / ear['ms_per_image_b1']:.2f}x, "
        f"batch 32 {ear['images_per_s_b32'] / riad['images_per_s_b32']:.2f}x",
    ]
    if sweep:
        lines += [
            "",
            f"Mosaic sweep (ear/none), r10 estimate m̂ = {m_hat} (r10 = {r10_value:.1f}):",
            "",
            "| m | image AUROC | pixel AUROC |",
            "|---|---|---|",
        ]
        lines += [
            f"| {s['m']}{' (m̂)' if s['m'] == m_hat else ''} | {s['image_auroc']:.3f} | {s['pixel_auroc']:.3f} |"
            for s in sweep
        ]
    text = "\n".join(lines)
    print(text)
    (args.out / "study.md").write_text(text + "\n")
    (args.out / "study.json").write_text(json.dumps({"rows": rows, "sweep": sweep, "m_hat": m_hat}, indent=2))


if __name__ == "__main__":
    main()
