"""bf16 against fp32 on a whole labelled test set: score agreement, image and pixel AUROC, speed, in one run.

    python benchmarks/precision_parity.py MODEL_DIR ../shared/data --category magnetic_tile

Both paths score the same images with the same model; the figures go to BENCHMARKS.md
(the acceptance bar: image and pixel AUROC within 0.005).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from ear_stream.inspect.evaluation import evaluate
    from ear_stream.inspect.pipeline import Pipeline, load_images
    from ear_stream.io.datasets import test_samples
    from ear_stream.model.precision import cpu_capability

    samples = test_samples(args.data_root, args.category)
    out = {}
    for name in ("fp32", "bf16"):
        pipe = Pipeline.from_artifact(args.model, device="cpu", precision=name)
        images = load_images(pipe.config, [s.path for s in samples], progress=False)
        t0 = time.perf_counter()
        res, _ = evaluate(pipe, args.data_root, args.category, batch_size=args.batch, progress=False,
                          samples=samples, images=images)  # fmt: skip
        out[name] = {"scores": res.scores, "image_auroc": res.image_auroc, "pixel_auroc": res.pixel_auroc,
                     "seconds": time.perf_counter() - t0}  # fmt: skip
    rel = np.abs(out["bf16"]["scores"] - out["fp32"]["scores"]) / np.abs(out["fp32"]["scores"]).clip(1e-6)
    rank = np.corrcoef(np.argsort(np.argsort(out["bf16"]["scores"])), np.argsort(np.argsort(out["fp32"]["scores"])))
    summary = {
        "cpu": cpu_capability(),
        "model": str(args.model),
        "n_images": len(samples),
        "image_auroc": {k: v["image_auroc"] for k, v in out.items()},
        "pixel_auroc": {k: v["pixel_auroc"] for k, v in out.items()},
        "image_auroc_diff": abs(out["bf16"]["image_auroc"] - out["fp32"]["image_auroc"]),
        "pixel_auroc_diff": abs((out["bf16"]["pixel_auroc"] or 0) - (out["fp32"]["pixel_auroc"] or 0)),
        "score_rel_diff_median": float(np.median(rel)),
        "score_rel_diff_p99": float(np.quantile(rel, 0.99)),
        "score_rel_diff_max": float(rel.max()),
        "rank_correlation": float(rank[0, 1]),
        "eval_seconds": {k: round(v["seconds"], 1) for k, v in out.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
