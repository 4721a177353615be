"""Does a model trained in bf16 reach fp32's held-out loss at equal steps? Both curves, side by side.

    python benchmarks/bf16_training.py ../shared/data --category magnetic_tile --steps 400 --out runs/bf16_vs_fp32

Trains the same model (same seed, data order, simulated defects) twice, once per precision, records the
held-out loss every ``--eval-every`` steps (always computed in fp32 numerics of the loss, with the U-Net on
each run's own path), and writes OUT/curves.png and OUT/curves.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/bf16_vs_fp32"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from ear_stream.inspect.training import train_model
    from ear_stream.inspect.visualize import line_chart_png
    from ear_stream.model.config import ModelConfig, TrainConfig
    from ear_stream.model.precision import cpu_capability

    curves, seconds = {}, {}
    for name in ("fp32", "bf16"):
        t0 = time.perf_counter()
        model = train_model(args.data_root, args.category, args.out / name,
                            ModelConfig(image_size=args.image_size, saliency="spectral", base_channels=args.width),
                            TrainConfig(batch_size=8, lr=1e-3, eval_every=args.eval_every, precision=name),
                            max_steps=args.steps, progress=False)  # fmt: skip
        seconds[name] = time.perf_counter() - t0
        curves[name] = [json.loads(line) for line in (model / "curve.jsonl").read_text().splitlines()]
    series = {k: [(r["step"], r["heldout_loss"]) for r in v] for k, v in curves.items()}
    (args.out / "curves.png").write_bytes(line_chart_png(series, "held-out loss, fp32 vs bf16", "step", "loss"))
    final = {k: v[-1]["heldout_loss"] for k, v in curves.items()}
    summary = {"cpu": cpu_capability(), "steps": args.steps, "final_heldout_loss": final,
               "relative_difference": abs(final["bf16"] - final["fp32"]) / final["fp32"],
               "train_seconds": {k: round(v, 1) for k, v in seconds.items()}, "curves": series}  # fmt: skip
    (args.out / "curves.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "curves"}, indent=2))


if __name__ == "__main__":
    main()
