"""Where the MSGMS map's max lands on good images: near the edge, or spread like the area?

For each trained model, scores the good test images and reports how often the argmax of the map
lies within --band pixels of the edge, with no border band and with the model's band, against
that band's share of the scored area; then the mean map per row and column.

    python benchmarks/border.py ../shared/data --category magnetic_tile runs/study/spectral runs/study/none
    python benchmarks/border.py --toy     # the controlled case: a U-Net of a uniform texture, 64 px

``--toy`` trains the small U-Net of ``tests/model/test_weightfree.py`` on a generated uniform texture and
reports the same shares for box 5 without a band and with the default band (box // 2), and with
no box filter at all: the box filter's replicate padding is what moves the max to the edge.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ear_stream.inspect.pipeline import Pipeline, score_maps
from ear_stream.io.datasets import load_tensor, test_samples


def edge_share(dmap: torch.Tensor, band: int, border: int) -> tuple[float, float]:
    """(fraction of argmaxes within ``band`` px of the edge, that band's share of the scored area)."""
    size = dmap.shape[-1]
    idx = dmap.flatten(1).argmax(dim=1)
    r, c = idx // size, idx % size
    near = ((r < band) | (r >= size - band) | (c < band) | (c >= size - band)).float().mean()
    return float(near), 1 - (size - 2 * band) ** 2 / (size - 2 * border) ** 2


def toy(band: int = 6) -> None:
    from ear_stream.model import ops
    from ear_stream.model.config import ScoringConfig
    from ear_stream.model.unet import UNet

    def texture(b: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        cols = torch.rand(b, 1, 1, 64, generator=g) * 0.2 + 0.4
        x = cols.expand(b, 1, 64, 64) + torch.randn(b, 1, 64, 64, generator=g) * 0.03
        return x.clamp(0, 1).expand(b, 3, 64, 64).contiguous()

    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        unet = UNet(base_channels=4)
        opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
        for i in range(40):
            x = texture(8, 100 + i)
            loss = (unet(ops.excise(x, None, 8)[0]) - x).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        unet.eval()
        with torch.no_grad():
            y = texture(64, 8)
            recon = unet(ops.excise(y, None, 8)[0])
        for box, border in ((1, 0), (5, 0), (5, None)):
            sc = ScoringConfig(scales=1, box=box, border=border).resolved(64)
            _, dmap = score_maps(y, recon, sc, True)
            near, share = edge_share(dmap, band, sc.border)
            print(
                f"seed {seed}, box {box}, border {sc.border}: max within {band} px of the edge for {near:.0%} (share {share:.0%})"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path, nargs="?")
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--category")
    p.add_argument("--band", type=int, default=8)
    p.add_argument("--toy", action="store_true")
    args = p.parse_args()
    if args.toy:
        toy()
        return
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
            near, share = edge_share(dmap, args.band, border)
            print(
                f"{model}: box {sc.box}, border {border}: max within {args.band} px of the edge for {near:.0%} "
                f"of {len(good)} good images (that band is {share:.0%} of the scored area)"
            )
        rows = dmap[:, 0].mean(dim=(0, 2))[:: max(1, size // 16)]
        cols = dmap[:, 0].mean(dim=(0, 1))[:: max(1, size // 16)]
        print("  mean map by row:   ", " ".join(f"{float(v):.3f}" for v in rows))
        print("  mean map by column:", " ".join(f"{float(v):.3f}" for v in cols))


if __name__ == "__main__":
    main()
