"""The CPU's real speed: precision × layout × compile, side by side in one run, one thread (per-core figures).

    python benchmarks/bench_cpu.py                       # everything (compiling takes minutes on 2 cores)
    python benchmarks/bench_cpu.py --no-compile --quick  # eager only, fewer repeats

Paths compared (``ear_stream.model.precision``):

* ``fp32 contiguous`` — what every CPU ran before the precision path existed (the baseline of the ratios);
* ``fp32 channels_last`` — what ``auto`` picks on a CPU without bf16 units;
* ``bf16 channels_last`` — what ``auto`` picks on a CPU with them (AVX512-BF16 or AMX);

each eager and ``torch.compile``d (inductor, dynamic batch). Printed: the CPU's capability line, U-Net
ms/image at batch 1 and 32 at 128 and 256 px, whole-pipeline ms/image, training steps/s (batch 8,
128 px, simulated defects on), and stream-worker images/s per core (local redis-server, decode,
score, Parquet, ack). Medians of repeated runs; ratios against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PATHS = {
    "fp32 contiguous": ("fp32", False),
    "fp32 channels_last": ("fp32", True),
    "bf16 channels_last": ("bf16", True),
}


def precision_of(name: str):  # type: ignore[no-untyped-def]
    from ear_stream.model.precision import Precision

    dtype, cl = PATHS[name]
    return Precision(dtype, "cpu", channels_last=cl)


def median_ms(fn, repeats: int, warmup: int = 2) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def model_config(size: int, width: int):  # type: ignore[no-untyped-def]
    from ear_stream.model.config import ModelConfig

    return ModelConfig(image_size=size, saliency="spectral", base_channels=width, mosaic_scale=size // 8)


def unet_and_pipeline(args: argparse.Namespace, rows: list[dict]) -> None:
    from ear_stream.inspect.pipeline import Pipeline
    from ear_stream.model.artifact import build_unet
    from ear_stream.model.weightfree import create_saliency

    for size in args.sizes:
        cfg = model_config(size, args.width)
        torch.manual_seed(0)
        weights = build_unet(cfg).eval().state_dict()
        for name in PATHS:
            for compiled in args.compile_modes:
                unet = build_unet(cfg)
                unet.load_state_dict(weights)
                pipe = Pipeline(
                    cfg, unet, 1.0, torch.device("cpu"), create_saliency("spectral"), precision=precision_of(name)
                )
                t0 = time.perf_counter()
                if compiled:
                    pipe.compile()
                    pipe.warm_up((1, 2))
                warm = time.perf_counter() - t0
                for batch in args.batches:
                    x = torch.rand((batch, 3, size, size))
                    composite = x.contiguous()
                    reps = max(3, args.repeats // (4 if batch > 8 else 1))
                    unet_ms = median_ms(lambda: pipe.reconstruct(composite), reps) / batch  # noqa: B023
                    pipe_ms = median_ms(lambda: pipe.score_tensor(x), reps) / batch  # noqa: B023
                    row = dict(stage="inference", size=size, path=name, compiled=compiled, batch=batch,
                               unet_ms=unet_ms, pipeline_ms=pipe_ms, compile_s=warm)  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)


def training_steps(args: argparse.Namespace, rows: list[dict]) -> None:
    from ear_stream.inspect.augment import step_generator
    from ear_stream.inspect.training import StepModules, step_loss
    from ear_stream.model.artifact import build_unet
    from ear_stream.model.config import TrainConfig
    from ear_stream.model.precision import compile_module
    from ear_stream.model.weightfree import create_saliency

    cfg = model_config(128, args.width)
    tcfg = TrainConfig(batch_size=8, lr=1e-3)
    x = torch.rand((8, 3, 128, 128), generator=torch.Generator().manual_seed(0)) * 0.3 + 0.35
    for name in PATHS:
        for compiled in args.compile_modes:
            p = precision_of(name)
            torch.manual_seed(0)
            unet = p.module(build_unet(cfg))
            forward = compile_module(unet) if compiled else unet
            mods = StepModules(forward=lambda t: p.run(forward, t), saliency=create_saliency("spectral"))  # noqa: B023
            opt = torch.optim.Adam(unet.parameters(), lr=tcfg.lr)
            step = {"n": 0}

            def one_step() -> None:
                loss = step_loss(cfg, tcfg, mods, x, None, step_generator(0, step["n"]))  # noqa: B023
                opt.zero_grad(set_to_none=True)  # noqa: B023
                loss.backward()
                opt.step()  # noqa: B023
                step["n"] += 1  # noqa: B023

            ms = median_ms(one_step, max(3, args.repeats // 2), warmup=3)
            row = dict(stage="training", size=128, path=name, compiled=compiled, batch=8, step_ms=ms,
                       steps_per_s=1000 / ms)  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)


def worker_throughput(args: argparse.Namespace, rows: list[dict]) -> None:
    """Images/s of one worker process on one thread, Redis + decode + score + Parquet + ack included."""
    import bench_worker

    import ear_stream.inspect.pipeline as pipeline_module
    from ear_stream.inspect.training import train_model
    from ear_stream.io.datasets import write_synthetic_category
    from ear_stream.io.decode import list_images
    from ear_stream.model.config import ModelConfig, TrainConfig

    with tempfile.TemporaryDirectory(prefix="ear-bench-cpu-") as tmp:
        tmp = Path(tmp)
        write_synthetic_category(tmp / "data", "synthetic", n_train=24, n_test_good=16, n_test_defect=8)
        model = train_model(tmp / "data", "synthetic", tmp / "models" / "synthetic",
                            ModelConfig(image_size=128, saliency="spectral", base_channels=args.width),
                            TrainConfig(batch_size=8, precision="fp32"), progress=False, max_steps=2)  # fmt: skip
        models_dir = bench_worker.link_models(model, tmp)
        payloads = [f.read_bytes() for f in list_images([str(tmp / "data" / "synthetic" / "test")])]
        original = pipeline_module.resolve_precision
        for name in PATHS:
            for compiled in args.compile_modes:
                # the worker resolves its precision by name; the baseline path has none, so pin it here
                pipeline_module.resolve_precision = lambda *_: precision_of(name)  # noqa: B023
                try:
                    run = bench_worker.worker_run(models_dir, payloads, args.worker_n, tmp / f"out-{name}-{compiled}",
                                                  batch_size=32, device="cpu", compile=compiled)  # fmt: skip
                finally:
                    pipeline_module.resolve_precision = original
                row = dict(stage="worker", size=128, path=name, compiled=compiled, batch=32,
                           images_per_s=run["rate"], warmup_s=run["warmup_s"])  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)


def summary(rows: list[dict]) -> str:
    base = {}
    for r in rows:
        if r["path"] == "fp32 contiguous" and not r["compiled"]:
            base[(r["stage"], r["size"], r["batch"])] = r
    lines = [
        "| stage | size | batch | path | compiled | figure | vs fp32 contiguous eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get((r["stage"], r["size"], r["batch"]))
        if r["stage"] == "inference":
            fig = f"U-Net {r['unet_ms']:.2f} ms/img, pipeline {r['pipeline_ms']:.2f} ms/img"
            ratio = (
                f"{b['pipeline_ms'] / r['pipeline_ms']:.2f}× (U-Net {b['unet_ms'] / r['unet_ms']:.2f}×)" if b else ""
            )
        elif r["stage"] == "training":
            fig = f"{r['steps_per_s']:.2f} steps/s ({r['step_ms']:.0f} ms)"
            ratio = f"{r['steps_per_s'] / b['steps_per_s']:.2f}×" if b else ""
        else:
            fig = f"{r['images_per_s']:.1f} images/s (warm-up {r['warmup_s']:.1f} s)"  # start-up: see the worker CLI
            ratio = f"{r['images_per_s'] / b['images_per_s']:.2f}×" if b else ""
        lines.append(
            f"| {r['stage']} | {r['size']} | {r['batch']} | {r['path']} | {'yes' if r['compiled'] else 'no'} | {fig} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: per-core figures)")
    p.add_argument("--width", type=int, default=32, help="U-Net width (train's default)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--worker-n", type=int, default=256, help="entries pushed per worker run")
    p.add_argument("--no-compile", action="store_true", help="eager only (compiling takes minutes)")
    p.add_argument("--quick", action="store_true", help="128 px, fewer repeats")
    p.add_argument("--only", nargs="+", default=["inference", "training", "worker"])
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeats = [128], 4
    args.compile_modes = [False] if args.no_compile else [False, True]
    torch.set_num_threads(args.threads)
    from ear_stream.model.precision import cpu_capability

    print(
        f"{cpu_capability()}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); U-Net width {args.width}"
    )
    rows: list[dict] = []
    if "inference" in args.only:
        unet_and_pipeline(args, rows)
    if "training" in args.only:
        training_steps(args, rows)
    if "worker" in args.only:
        worker_throughput(args, rows)
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
