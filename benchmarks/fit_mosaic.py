"""Refit the r10 → m mapping of the mosaic-scale estimator from a study's m sweep.

Reads OUT/<variant>@m<N>.json written by ``study.py --variants v@m8,v@m16,…`` and the r10 of
the same data (the variant's auto run, ``--r10-from``), picks m* by validation AUROC at the
default scoring (no second selection over post-processing), and fits the line with
:func:`ear_stream.model.mosaic_scale.fit_estimator`: one dataset gives one (r10, m*) pair, so the
slope of the current estimator is kept and the intercept moves through the pair.

    python benchmarks/fit_mosaic.py runs/sweep --variant spectral --r10-from runs/study/spectral.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ear_stream.model.mosaic_scale import MosaicEstimator, fit_estimator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--variant", required=True)
    p.add_argument("--r10-from", type=Path, required=True, help="study JSON of the variant's auto-m run")
    args = p.parse_args()
    r10 = json.loads(args.r10_from.read_text())["r10"]
    rows = []
    for path in sorted(args.sweep_dir.glob(f"{args.variant}@m*.json")):
        m = int(re.search(r"@m(\d+)\.json$", path.name).group(1))
        data = json.loads(path.read_text())
        rows.append((m, data["val_by_scoring"][0]["val_image_auroc"], data["image_auroc_default_scoring"]))
    rows.sort()
    print("| m | validation AUROC (default scoring) | test AUROC (default scoring, record only) |")
    print("|---|---|---|")
    for m, val, test in rows:
        print(f"| {m} | {val:.3f} | {test:.3f} |")
    best = max(rows, key=lambda r: r[1])[0]
    old = MosaicEstimator()
    new = fit_estimator([r10], [best], prior=old)
    print(f"\nr10 = {r10:.1f}; old estimate m = {old.estimate(r10)}, best on validation m* = {best}")
    print(f"refit: m = {new.intercept:.1f} + ({new.slope:.2f})·r10  (estimate at this r10: {new.estimate(r10)})")


if __name__ == "__main__":
    main()
