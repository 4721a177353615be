"""Training steps per second, eager vs ``torch.compile``d, side by side in one run.

    python benchmarks/train_speed.py --device cuda --size 256 --batch 32      # the GPU figure (issue #12)
    python benchmarks/train_speed.py --device cpu --size 64 --batch 8 --steps 10

One training step is what ``train_model`` runs: simulated defects, excise (spectral
saliency), U-Net forward on the ``--precision`` path (auto: bf16 autocast + channels_last
on CUDA and on CPUs with bf16 units), the combined loss, backward, Adam. Prints median ms/step after warm-up for eager and compiled,
their ratio, and the projected time of a 300-epoch run of ``--images`` images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_steps(compiled: bool, args: argparse.Namespace) -> list[float]:
    from ear_stream.inspect.augment import step_generator
    from ear_stream.inspect.training import StepModules, step_loss
    from ear_stream.model.artifact import build_unet
    from ear_stream.model.config import ModelConfig, TrainConfig
    from ear_stream.model.precision import compile_module, resolve_precision
    from ear_stream.model.weightfree import create_saliency

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    precision = resolve_precision(args.precision, dev)
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=args.size, saliency="spectral", base_channels=args.width, mosaic_scale=16)
    tcfg = TrainConfig(batch_size=args.batch, simulate=args.simulate)
    unet = precision.module(build_unet(cfg).to(dev))
    forward = compile_module(unet) if compiled else unet
    mods = StepModules(forward=lambda x: precision.run(forward, x), saliency=create_saliency("spectral").to(dev))
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step_loss(cfg, tcfg, mods, x, None, step_generator(0, i)).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=400, help="training images, for the 300-epoch projection")
    p.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (ear_stream.model.precision)")
    p.add_argument("--simulate", type=float, default=0.5, help="share of images with a simulated defect")
    args = p.parse_args()
    name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"{name}, torch {torch.__version__}, {args.size} px, batch {args.batch}, U-Net width {args.width}")
    rows = {}
    for compiled in (False, True):
        t0 = time.perf_counter()
        times = time_steps(compiled, args)
        med = statistics.median(times)
        rows["compiled" if compiled else "eager"] = med
        print(f"{'compiled' if compiled else 'eager':>8}: {1000 * med:8.1f} ms/step, {1 / med:6.2f} steps/s "
              f"(run incl. warm-up/compile {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    steps_300 = 300 * -(-args.images // args.batch)
    print(f"compiled/eager speed-up: {rows['eager'] / rows['compiled']:.2f}x")
    print(f"300 epochs of {args.images} images = {steps_300} steps: eager {steps_300 * rows['eager'] / 60:.1f} min, "
          f"compiled {steps_300 * rows['compiled'] / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
