"""Cost of each weight-free saliency variant relative to the U-Net pass, side by side in one process.

Criterion (issue 9): a single-pass variant costs ≤ 10 % of the U-Net's time per
image on the CPU. ``self`` is two-pass by design: its saliency *is* a U-Net pass
(plus a light excision and an MSGMS map), so its ratio is reported, not bounded.

    python benchmarks/bench_saliency.py --image-size 128 --width 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ear_stream.inspect.pipeline import Pipeline
from ear_stream.inspect.variant import two_pass_attention
from ear_stream.model.config import ModelConfig
from ear_stream.model.unet import UNet
from ear_stream.model.weightfree import create_saliency


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    torch.manual_seed(0)
    unet = UNet(base_channels=args.width).eval()
    print(f"torch threads {torch.get_num_threads()}, {args.image_size} px, U-Net width {args.width}")
    print("| batch | variant | saliency ms/image | U-Net ms/image | ratio |")
    print("|---|---|---|---|---|")
    for batch in (1, 32):
        x = torch.rand(batch, 3, args.image_size, args.image_size)
        with torch.no_grad():
            unet_ms = median_ms(lambda x=x: unet(x), args.reps) / batch
            for name in ("spectral", "stats", "self"):
                sal = create_saliency(name)
                if sal.fitted:
                    sal.fit(torch.rand(16, 3, args.image_size, args.image_size))
                if sal.two_pass:
                    pipe = Pipeline(
                        ModelConfig(image_size=args.image_size, saliency=name), unet, 1.0, torch.device("cpu"), sal
                    )
                    fn = lambda x=x, s=sal, pipe=pipe: two_pass_attention(s, pipe.reconstruct, x, pipe.config.scoring)  # noqa: E731
                else:
                    fn = lambda x=x, s=sal: s(x)  # noqa: E731
                ms = median_ms(fn, args.reps) / batch
                print(f"| {batch} | {name} | {ms:.2f} | {unet_ms:.2f} | {ms / unet_ms:.1%} |")


if __name__ == "__main__":
    main()
