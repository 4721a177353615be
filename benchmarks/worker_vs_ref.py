"""Stream-worker images/s per core of this tree against an earlier commit's, side by side in one run.

    python benchmarks/worker_vs_ref.py --ref 8a3c7a1      # "today's fp32": the main before the precision path

The reference runs from a temporary ``git worktree`` of ``--ref`` (with this venv and the built extension),
in a subprocess with one torch thread; this tree runs with ``--precision`` (default auto). Both push the
same 256 generated 128-px PNGs to a fresh local redis-server and score them into Parquet with one worker,
batch 32, a 128-px spectral model of width 32. The reference is measured before and after this tree's run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, tempfile, time, torch
torch.set_num_threads(1)
from pathlib import Path
from ear_stream.inspect.training import train_model
from ear_stream.io.datasets import write_synthetic_category
from ear_stream.io.decode import list_images
from ear_stream.model.config import ModelConfig, TrainConfig
from ear_stream.stream import queue as q
from ear_stream.stream.redis_server import RedisServer
from ear_stream.stream.worker import Worker, WorkerConfig
extra = json.loads(sys.argv[1])
tmp = Path(tempfile.mkdtemp())
write_synthetic_category(tmp / "data", "synthetic", n_train=24, n_test_good=16, n_test_defect=8)
model = train_model(tmp / "data", "synthetic", tmp / "models" / "synthetic",
                    ModelConfig(image_size=128, saliency="spectral", base_channels=32),
                    TrainConfig(epochs=1, batch_size=8), progress=False, max_steps=2)
md = tmp / "ml"; md.mkdir(); (md / "product").symlink_to(model, target_is_directory=True)
payloads = [f.read_bytes() for f in list_images([str(tmp / "data" / "synthetic" / "test")])]
with RedisServer() as server:
    scfg = q.StreamConfig(stream="b:in", group="b", dlq="b:dlq")
    c = q.connect(server.url)
    for i in range(256):
        q.push(c, "product", payloads[i % len(payloads)], f"i-{i}", None, scfg)
    w = Worker(WorkerConfig(redis_url=server.url, models_dir=md, out_dir=tmp / "out", stream=scfg, batch_size=32,
                            device="cpu", flush_rows=256, flush_seconds=1.0, block_ms=100, exit_when_idle_s=0.2, **extra))
    t0 = time.perf_counter(); st = w.run(); el = time.perf_counter() - t0 - st.get("warmup_s", 0.0)
print(json.dumps({"images_per_s": st["scored"] / el}))
"""


def measure(tree: Path, extra: dict) -> float:
    env_path = str(tree)
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(extra)], cwd=tree, capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin:/usr/local/bin"},
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default="8a3c7a1", help="commit to compare against")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ear-ref-") as tmp:
        ref = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(ref), args.ref], check=True)
        try:
            for so in (ROOT / "ear_stream").glob("_C*.so"):
                shutil.copy(so, ref / "ear_stream" / so.name)
            before = measure(ref, {})
            ours = measure(ROOT, {"precision": args.precision})
            after = measure(ref, {})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], check=False)
    base = (before + after) / 2
    print(f"{args.ref} worker: {before:.1f} / {after:.1f} images/s (before / after); this tree "
          f"(--precision {args.precision}): {ours:.1f} images/s; ratio {ours / base:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
