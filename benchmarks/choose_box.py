"""Choose a model's MSGMS box filter on the validation subset, report the held-out test subset.

    python benchmarks/choose_box.py runs/native/native runs/native/resized --data ../shared/data \\
        --category magnetic_tile --boxes 5,11,21,31

The split is the study's (salted SHA-1 of the file name, ``benchmarks/study.py``): the box
(with the border band at box // 2) is picked by validation image AUROC only; the test column
is reported for every candidate so nothing hides, but only the validation choice counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--boxes", default="5,11,21,31")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from study import split_of

    from ear_stream.inspect.pipeline import Pipeline, load_images
    from ear_stream.io.datasets import test_samples

    samples = test_samples(args.data, args.category)
    split = np.array([split_of(s.path, 0.2) for s in samples])
    labels = np.array([s.defect != "good" for s in samples])
    out = {}
    for model in args.models:
        pipe = Pipeline.from_artifact(model, device="cpu")
        images = load_images(pipe.config, [s.path for s in samples], progress=False)
        base = pipe.config.scoring
        rows = []
        for box in [int(b) for b in args.boxes.split(",")]:
            pipe.config.scoring = dataclasses.replace(base, box=box, border=box // 2)
            scores = np.concatenate([pipe.score_images(images[i : i + 8]).scores for i in range(0, len(samples), 8)])
            row = {"box": box}
            for part in ("val", "test"):
                sel = split == part
                row[part] = float(roc_auc_score(labels[sel], scores[sel]))
            rows.append(row)
            print(f"{model.name}: box {box:>2}: validation {row['val']:.3f}, test {row['test']:.3f}", flush=True)
        best = max(rows, key=lambda r: r["val"])
        out[str(model)] = {"candidates": rows, "chosen_on_validation": best}
        print(f"{model.name}: chosen on validation box {best['box']} -> test image AUROC {best['test']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
