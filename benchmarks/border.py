"""Where the MSGMS map's max lands on good images: near the edge, or spread like the area?

For each trained model, scores the good test images and reports how often the argmax of the map
lies within --band pixels of the edge, with no border band and with the model's band, against
that band's share of the scored area; then the mean map per row and column.

    python benchmarks/border.py ../shared/data --category magnetic_tile runs/study/spectral runs/study/none
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ear_stream.inspect.pipeline import Pipeline, score_maps
from ear_stream.io.datasets import load_tensor, test_samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--band", type=int, default=8)
    args = p.parse_args()
    good = [s for s in test_samples(args.data_root, args.category) if s.defect == "good"]
    for model in args.models:
        pipe = Pipeline.from_artifact(model, device="cpu")
        size = pipe.config.image_size
        x = load_tensor([s.path for s in good], size, progress=False)
        with torch.no_grad():
            recon = torch.cat([pipe.recover(x[i : i + 32])[3] for i in range(0, len(x), 32)])
        for border in (0, pipe.config.scoring.border):
            sc = dataclasses.replace(pipe.config.scoring, border=border)
            _, dmap = score_maps(x, recon, sc, True)
            idx = dmap.flatten(1).argmax(dim=1)
            r, c = idx // size, idx % size
            b = args.band
            near = ((r < b) | (r >= size - b) | (c < b) | (c >= size - b)).float().mean()
            share = 1 - (size - 2 * b) ** 2 / (size - 2 * border) ** 2
            print(
                f"{model}: box {sc.box}, border {border}: max within {b} px of the edge for {float(near):.0%} "
                f"of {len(good)} good images (that band is {share:.0%} of the scored area)"
            )
        rows = dmap[:, 0].mean(dim=(0, 2))[:: max(1, size // 16)]
        cols = dmap[:, 0].mean(dim=(0, 1))[:: max(1, size // 16)]
        print("  mean map by row:   ", " ".join(f"{float(v):.3f}" for v in rows))
        print("  mean map by column:", " ".join(f"{float(v):.3f}" for v in cols))


if __name__ == "__main__":
    main()
