"""Two cheap questions about a study's trained model, answered on the study's validation subset.

    python benchmarks/score_probes.py runs/study60/spectral+sim+head --data ../shared/data \\
        --category magnetic_tile --val-fraction 0.4

1. **Threshold policies on a finer grid than the study's table** (``fpr:0.01`` … ``fpr:0.05``,
   ``quantile:0.98/0.99``, ``sigma:3``, ``simf1``), thresholds from the model's own calibration: the
   threshold comes from 50-odd held-out good scores (``fpr:F`` lets ⌊F·n⌋ of them above it), so
   neighbouring policies often share a threshold; validation and reported rates side by side show how
   far validation's false-reject rate carries.
2. **Head models: fusing the head's score with the same model's MSGMS max.** The MSGMS map is
   computed anyway (it is one of the head's inputs), so a rank average
   ``w·rank(msgms) + (1−w)·rank(head)`` would cost nothing at inference. Printed for MSGMS boxes
   1/5/11 and w = 0.25/0.5/0.75.

The split is the study's (salted SHA-1 of the file name, ``benchmarks/study.py``). The reported
subset is printed beside validation so nothing hides, but only validation may decide anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FUSION_WEIGHTS = (0.25, 0.5, 0.75)
MSGMS_BOXES = (1, 5, 11)
POLICIES = ("sigma:3", "fpr:0.01", "fpr:0.02", "fpr:0.03", "fpr:0.05", "quantile:0.98", "quantile:0.99", "simf1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--val-fraction", type=float, default=0.4)
    args = p.parse_args()
    torch.set_num_threads(1)

    from study import operating_points, split_of

    from ear_stream.inspect.pipeline import Pipeline, score_maps
    from ear_stream.io.datasets import load_tensor, test_samples

    pipe = Pipeline.from_artifact(args.model, device="cpu")
    samples = test_samples(args.data, args.category)
    images = load_tensor([s.path for s in samples], pipe.config.image_size, progress=False)
    labels = np.array([s.defect != "good" for s in samples])
    split = np.array([split_of(s.path, args.val_fraction) for s in samples])
    sub = {k: np.where(split == k)[0] for k in ("val", "test")}

    model_scores, msgms = [], {box: [] for box in MSGMS_BOXES}
    with torch.no_grad():
        for i in range(0, len(samples), 32):
            x = images[i : i + 32]
            recon = pipe.recover(x)[3]
            model_scores.append(pipe.score_recon(x, recon, False)[0].numpy())
            for box in MSGMS_BOXES if pipe.head is not None else ():
                sc = dataclasses.replace(pipe.config.scoring, box=box)
                msgms[box].append(score_maps(x, recon, sc, False)[0].float().numpy())
    scores = np.concatenate(model_scores)

    def auroc(values: np.ndarray) -> str:
        val, test = sub["val"], sub["test"]
        return f"val {roc_auc_score(labels[val], values[val]):.3f}  reported {roc_auc_score(labels[test], values[test]):.3f}"

    print(f"{args.model}: {sub['val'].size} validation / {sub['test'].size} reported images")
    print(f"model score (default scoring)      {auroc(scores)}")
    manifest = json.loads((args.model / "manifest.json").read_text())
    print(f"\nthresholds from the model's {len(manifest['calibration']['scores'])} held-out good scores")
    for policy, row in operating_points(manifest, scores, samples, sub, POLICIES).items():
        rates = "  ".join(
            f"{name} FRR {row[part]['false_reject_rate']:6.1%} escapes {row[part]['escape_rate']:6.1%}"
            for part, name in (("val", "val"), ("test", "reported"))
        )
        print(f"{policy:<14} thr {row['threshold']:.4f}  {rates}")

    if pipe.head is None:
        return
    print("\nhead model: its score fused with its own MSGMS max (rank average)")
    for box in MSGMS_BOXES:
        plain = np.concatenate(msgms[box])
        print(f"MSGMS max, box {box:<2}                {auroc(plain)}")
        for w in FUSION_WEIGHTS:
            fused = w * rankdata(plain) + (1 - w) * rankdata(scores)
            print(f"  rank fusion, w(MSGMS) = {w:<4}     {auroc(fused)}")


if __name__ == "__main__":
    main()
