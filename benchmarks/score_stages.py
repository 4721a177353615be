"""`ear-stream score` end to end, per stage, across precisions and runtimes, side by side in one run.

What a user waits for is the whole command: start-up, reading and decoding, resizing, the networks, rows and
Parquet. Each configuration runs ``ear-stream score --timings`` in a fresh process on the same images with
the same thread count (``OMP_NUM_THREADS``), ``--repeat`` times, interleaved; the table gives the median
wall time, its ratio to torch fp32, and the median seconds per stage. Exports are made (and cached) by a
warm-up run first: exporting is not scoring.

    python benchmarks/score_stages.py --model models/magnetic_tile --images DATA/magnetic_tile/test --n 320
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "torch fp32": ["--precision", "fp32"],
    "torch auto": ["--precision", "auto"],
    "onnx fp32": ["--runtime", "onnx", "--precision", "fp32"],
    "openvino fp32": ["--runtime", "openvino", "--precision", "fp32"],
    "openvino auto": ["--runtime", "openvino", "--precision", "auto"],
    "aoti fp32": ["--runtime", "aoti", "--precision", "fp32"],
    "aoti auto": ["--runtime", "aoti", "--precision", "auto"],
}


def pick_images(root: Path, n: int, tmp: Path) -> Path:
    """The first n images under root in name order, linked into one folder (the same set for every run)."""
    found = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and "_mask" not in p.name
    )
    chosen = tmp / "images"
    chosen.mkdir()
    for i, p in enumerate(found[:n]):
        (chosen / f"{i:05d}-{p.parent.name}-{p.name}").symlink_to(p.resolve())
    return chosen


def run_once(
    exe: str, model: str, images: Path, args: list[str], threads: int, cache: Path
) -> tuple[float, dict[str, float]]:
    out = Path(tempfile.mkdtemp(prefix="stages-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EAR_STREAM_EXPORT_CACHE": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([exe, "score", str(images), "--model", model, "--out", str(out / "r"), "--timings", *args],
                          capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"score {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    stages = {}
    for line in done.stderr.splitlines():
        m = re.match(r"^([A-Za-z+\-]+(?: [A-Za-z+\-]+)?)\s+([0-9.]+)\s+[0-9.]+%\s+[0-9.]+$", line.strip())
        if m:
            stages[m.group(1)] = float(m.group(2))
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--n", type=int, default=320)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("ear-stream"))
    names = [c.strip() for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        images = pick_images(args.images, args.n, Path(tmp))
        cache = Path(tmp) / "exports"
        n = len(list(images.iterdir()))
        for name in names:  # warm-up: exports into the cache, files into the page cache
            run_once(exe, args.model, images, CONFIGS[name], args.threads, cache)
        walls: dict[str, list[float]] = {name: [] for name in names}
        stages: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for _ in range(args.repeat):
            for name in names:
                wall, st = run_once(exe, args.model, images, CONFIGS[name], args.threads, cache)
                walls[name].append(wall)
                stages[name].append(st)
    base = statistics.median(walls[names[0]])
    keys: list[str] = []
    for name in names:
        for st in stages[name]:
            keys += [k for k in st if k not in keys and k != "total"]
    print(f"{n} images, {args.threads} thread(s), median of {args.repeat} runs each, ratios against {names[0]}")
    print(f"{'config':<15}{'wall s':>8}{'img/s':>8}{'speed-up':>9}  " + "".join(f"{k:>12}" for k in keys))
    for name in names:
        wall = statistics.median(walls[name])
        cells = "".join(f"{statistics.median([st.get(k, 0.0) for st in stages[name]]):>12.2f}" for k in keys)
        print(f"{name:<15}{wall:>8.2f}{n / wall:>8.1f}{base / wall:>8.2f}×  {cells}")


if __name__ == "__main__":
    main()
