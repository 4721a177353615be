"""How well does each saliency's Q3 mask cover real defects? (validation subset only)

For the defective images of the study's validation subset (salted SHA-1 split, the same as
``study.py``), the fraction of the image masked, the fraction of ground-truth defect pixels inside
the mask, and the fraction of defects the mask touches at all, per variant and per defect type.
A random attention grid is the baseline. Needs no trained model.

    python benchmarks/saliency_cover.py ../shared/data --category magnetic_tile --image-size 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import split_of

from ear_stream.io.datasets import load_mask, load_tensor, test_samples, train_images
from ear_stream.model.reference import saliency_mask
from ear_stream.model.weightfree import create_saliency


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.2)
    args = p.parse_args()
    size = args.image_size
    samples = test_samples(args.data_root, args.category)
    defect = [s for s in samples if s.defect != "good" and split_of(s.path, args.val_fraction) == "val"]
    images = load_tensor([s.path for s in defect], size, progress=False)
    gt = torch.stack([load_mask(s.mask_path, size) for s in defect]).float()
    stats = create_saliency("stats")
    stats.fit(load_tensor(train_images(args.data_root, args.category)[:200], size, progress=False))
    torch.manual_seed(0)
    variants = {
        "spectral": create_saliency("spectral")(images),
        "stats": stats(images),
        "random grid": torch.rand(len(defect), 16, 16),
    }
    print(f"{len(defect)} defective validation images, {size} px")
    print("| attention | masked | defect pixels covered | defects touched | per defect (covered / touched) |")
    print("|---|---|---|---|---|")
    for name, att in variants.items():
        mask = saliency_mask(att, (size, size))[:, 0]
        inside = (mask * gt).flatten(1).sum(1)
        covered = inside / gt.flatten(1).sum(1).clamp(min=1)
        touched = (inside > 0).float()
        per = ", ".join(
            f"{d} {covered[idx].mean():.2f}/{touched[idx].mean():.2f}"
            for d in sorted({s.defect for s in defect})
            for idx in [[i for i, s in enumerate(defect) if s.defect == d]]
        )
        print(f"| {name} | {mask.mean():.0%} | {covered.mean():.0%} | {touched.mean():.0%} | {per} |")


if __name__ == "__main__":
    main()
