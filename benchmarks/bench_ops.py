"""Fused ``excise``/``msgms`` vs the eager PyTorch reference (and torch.compile of it), side by side.

Prints medians and ratios measured in one process on the same inputs:

    python benchmarks/bench_ops.py                       # CPU B=16 and, when present, CUDA B=256
    python benchmarks/bench_ops.py --cpu-batch 16 --size 256 --repeats 7 --no-compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ear_stream.model import ops
from ear_stream.model import reference as ref


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, compilation)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_device(device: torch.device, batch: int, size: int, repeats: int, compile_ref: bool) -> list[tuple]:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.rand(batch, 3, size, size, device=device)
    att = torch.rand(batch, 28, 28, device=device)
    rows = []
    cases = {
        "msgms": (lambda: ops.msgms(x, y), lambda: ref.msgms_reference(x, y), ref.msgms_reference, (x, y)),
        "excise(m=16)": (
            lambda: ops.excise(x, att, 16),
            lambda: ref.excise_reference(x, att, 16),
            ref.excise_reference,
            (x, att, 16),
        ),
    }
    for name, (fused, eager, raw, args) in cases.items():
        t_fused = median_ms(fused, repeats, device)
        t_eager = median_ms(eager, repeats, device)
        t_comp = float("nan")
        if compile_ref:
            try:
                compiled = torch.compile(raw)
                t_comp = median_ms(lambda c=compiled, a=args: c(*a), repeats, device)
            except Exception as exc:  # noqa: BLE001 - report, do not abort the table
                print(f"torch.compile of {name} failed: {type(exc).__name__}: {exc}"[:200])
        rows.append((device.type, name, batch, size, t_eager, t_comp, t_fused, t_eager / t_fused))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-batch", type=int, default=16)
    p.add_argument("--cuda-batch", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    args = p.parse_args()
    print(f"backend: {ops.backend()}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    rows = bench_device(torch.device("cpu"), args.cpu_batch, args.size, args.repeats, not args.no_compile)
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name()}")
        rows += bench_device(torch.device("cuda"), args.cuda_batch, args.size, args.repeats, not args.no_compile)
    print(
        f"{'device':<6} {'op':<13} {'B':>4} {'HxW':>8} {'eager ms':>10} {'compile ms':>11} {'fused ms':>9} {'eager/fused':>12}"
    )
    for dev, name, b, s, te, tc, tf, ratio in rows:
        print(f"{dev:<6} {name:<13} {b:>4} {f'{s}x{s}':>8} {te:>10.3f} {tc:>11.3f} {tf:>9.3f} {ratio:>11.1f}x")


if __name__ == "__main__":
    main()
