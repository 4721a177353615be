"""Learning from the line on Magnetic Tile (issue 29): ``ear-stream refine`` with K confirmed defects.

One parent (``--base``, an ``ear-stream train`` model) is refined, run by run, with labels drawn **only from
the validation subset** of the test images (the salted SHA-1 split of ``study.py``), and every model — parent
and candidates — is scored on the **reported** subset, which no choice here looks at.

Runs (``--runs``, each ``name`` below): ``k1``, ``k3``, ``k10``, ``k30``, ``k100`` (K confirmed defects with
their ground-truth masks, as brushed on the review page, and K confirmed goods, fewer when the validation
subset has fewer); ``k30-nomask`` (image labels only); ``unseen`` (30 defects of two types only); ``onetype``
(30 of one type); ``flipped`` (K = 30 with 10 % of the labels flipped). Each refinement is the real command
(``ear-stream refine … --max-minutes M``, a CPU-minute budget on one thread), ``--parallel`` at a time.

Reported per model: image AUROC, pixel AUROC, escapes at ≤ 2 % and ≤ 5 % false rejects (operating points
read off the reported subset: for comparison between models only), escapes and false rejects at the model's
own threshold, AUROC per defect type, refine CPU-minutes, and what ``promote`` would decide.

    python benchmarks/refine_study.py ../shared/data --category magnetic_tile --base /tmp/study/base \\
        --out /tmp/study/refine --minutes 10 --parallel 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from study import split_of  # the one split every study uses

RUNS = {
    "k1": {"k": 1},
    "k3": {"k": 3},
    "k10": {"k": 10},
    "k30": {"k": 30},
    "k100": {"k": 100},
    "k30-nomask": {"k": 30, "masks": False},
    "unseen": {"k": 30, "types": ("blowhole", "break")},
    "onetype": {"k": 30, "types": ("blowhole",)},
    "flipped": {"k": 30, "flip": 0.1},
}


def rank(name: str, salt: str) -> str:
    return hashlib.sha1(f"{salt}:{name}".encode()).hexdigest()


def draw_labels(val: list, spec: dict) -> list[tuple]:
    """(sample, label, with mask) for one run: K defects (of the allowed types) and K goods from validation."""
    types = spec.get("types")
    defects = sorted((s for s in val if s.defect != "good" and (types is None or s.defect in types)),
                     key=lambda s: rank(s.path.name, "defect"))  # fmt: skip
    goods = sorted((s for s in val if s.defect == "good"), key=lambda s: rank(s.path.name, "good"))
    k = spec["k"]
    rows = [(s, "defect", spec.get("masks", True)) for s in defects[:k]] + [(s, "good", False) for s in goods[:k]]
    flip = spec.get("flip", 0.0)
    if flip:
        out = []
        for s, lab, mask in rows:
            if int(rank(s.path.name, "flip")[:8], 16) / 0xFFFFFFFF < flip:
                lab, mask = ("good" if lab == "defect" else "defect"), False
            out.append((s, lab, mask))
        rows = out
    return rows


def write_labels(rows: list[tuple], store_dir: Path, test_dir: Path, product: str) -> None:
    from ear_stream.io.labels import Label, LabelStore, Mask

    labels, masks = [], []
    for s, lab, with_mask in rows:
        labels.append(Label(product, str(s.path.relative_to(test_dir)), lab, reviewer="study"))
        masks.append(Mask.from_png(s.mask_path.read_bytes()) if with_mask and s.mask_path is not None else None)
    LabelStore(store_dir).add_many(labels, masks)


def evaluate(model_dir: Path, samples: list, images, masks) -> dict:
    """The reported subset's figures for one model."""
    from ear_stream.inspect.pipeline import Pipeline
    from ear_stream.model.artifact import load_manifest

    pipe = Pipeline.from_artifact(model_dir, "cpu")
    scores, maps = pipe.score_batches(images, 16, want_maps=True)
    labels = np.array([s.defect != "good" for s in samples])
    good = scores[~labels]
    out = {"image_auroc": float(roc_auc_score(labels, scores))}
    pix = np.concatenate([m.float().numpy().ravel() for m in maps])
    out["pixel_auroc"] = float(roc_auc_score(masks.ravel() > 0.5, pix))
    for frr in (0.02, 0.05):
        thr = float(np.quantile(good, 1 - frr)) if len(good) else float("inf")
        out[f"escapes_at_{int(frr * 100)}pct_frr"] = float((scores[labels] <= thr).mean())
    thr = pipe.threshold
    out["threshold"] = thr
    out["escapes_own"] = float((scores[labels] <= thr).mean())
    out["false_rejects_own"] = float((good > thr).mean())
    out["per_type"] = {}
    for t in sorted({s.defect for s in samples} - {"good"}):
        of_type = scores[[s.defect == t for s in samples]]
        both = np.r_[np.zeros(len(good)), np.ones(len(of_type))]
        out["per_type"][t] = float(roc_auc_score(both, np.r_[good, of_type]))
    lineage = load_manifest(model_dir).lineage
    if lineage:
        held = lineage["heldout"]
        out["promotable"] = held["promotable"]
        out["refusal"] = held["refusal"]
        out["heldout"] = {"parent": held["parent"], "candidate": held["candidate"]}
        out["labels"] = lineage["labels"]
    return out


def refine(args, name: str, base: Path, out: Path, data_root: Path, test_dir: Path) -> subprocess.Popen:
    run = out / name
    cmd = [sys.executable, "-m", "ear_stream.cli", "refine", str(base), "--labels", str(run / "labels"),
           "--images", str(test_dir), "--product", "magnetic_tile", "--data", str(data_root),
           "--category", args.category, "--out", str(run / "model"), "--max-minutes", str(args.minutes),
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    log = open(run / "refine.log", "w")  # noqa: SIM115 - the child writes it until it ends
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def plot(study_json: Path, out_png: Path) -> None:
    """The curve of BENCHMARKS.md: image AUROC and escapes at ≤ 2 % false rejects against K (runs k1…k100)."""
    from ear_stream.inspect.visualize import line_chart_png

    rows = json.loads(study_json.read_text())["rows"]
    ks = [(0, rows["parent (K=0)"])] + [
        (RUNS[n]["k"], rows[n]) for n in ("k1", "k3", "k10", "k30", "k100") if n in rows
    ]
    series = {
        "image AUROC": [(float(k), r["image_auroc"]) for k, r in ks],
        "escapes @2% FRR": [(float(k), r["escapes_at_2pct_frr"]) for k, r in ks],
        "pixel AUROC": [(float(k), r["pixel_auroc"]) for k, r in ks],
    }
    title = "Magnetic Tile, refine with K confirmed defects + K goods (reported subset)"
    out_png.write_bytes(line_chart_png(series, title, "K confirmed defects", "", 640, 360))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_root", type=Path)
    ap.add_argument("--category", default="magnetic_tile")
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--val-fraction", type=float, default=0.5)
    ap.add_argument(
        "--plot-only", action="store_true", help="only redraw OUT/refine_curve.png from OUT/refine_study.json"
    )
    args = ap.parse_args()
    if args.plot_only:
        plot(args.out / "refine_study.json", args.out / "refine_curve.png")
        return

    from ear_stream.inspect.inputs import load_images
    from ear_stream.io.datasets import load_mask, test_samples
    from ear_stream.model.artifact import load_manifest

    samples = test_samples(args.data_root, args.category)
    test_dir = args.data_root / args.category / "test"
    val = [s for s in samples if split_of(s.path, args.val_fraction) == "val"]
    rep = [s for s in samples if split_of(s.path, args.val_fraction) == "test"]
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.runs.split(",") if n]
    pending, running = list(names), {}
    for name in names:
        run = args.out / name
        if (run / "model" / "manifest.json").is_file():
            pending.remove(name)
            continue
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "labels").is_dir():
            write_labels(draw_labels(val, RUNS[name]), run / "labels", test_dir, "magnetic_tile")
    started = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            running[name] = refine(args, name, args.base, args.out, args.data_root, test_dir)
            started[name] = time.time()
            print(f"refining {name}", flush=True)
        time.sleep(5)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"{name}: exit {proc.returncode} after {time.time() - started[name]:.0f}s", flush=True)
                del running[name]

    cfg = load_manifest(args.base).config
    images = load_images(cfg, [s.path for s in rep], progress=False)
    masks = np.stack([load_mask(s.mask_path, cfg.image_size).numpy() for s in rep])
    rows = {"parent (K=0)": evaluate(args.base, rep, images, masks)}
    for name in names:
        model = args.out / name / "model"
        if (model / "manifest.json").is_file():
            rows[name] = evaluate(model, rep, images, masks)
            rows[name]["refine_cpu_minutes"] = round(load_manifest(model).training["seconds"] / 60, 2)
    counts = {t: sum(s.defect == t for s in rep) for t in sorted({s.defect for s in rep})}
    (args.out / "refine_study.json").write_text(json.dumps({"reported": counts, "rows": rows}, indent=2))
    types = sorted(set(counts) - {"good"})
    lines = [
        f"Reported subset: {counts} (validation subset {len(val)} images: labels drawn there only).",
        "",
        "| run | image AUROC | pixel AUROC | escapes @2% FRR | @5% FRR | own threshold: escapes / FR | "
        + " | ".join(types)
        + " | CPU-min | promote |",
        "|---" * (8 + len(types)) + "|",
    ]
    for name, r in rows.items():
        verdict = "—" if "promotable" not in r else ("yes" if r["promotable"] else "refused")
        lines.append(
            f"| {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['escapes_at_2pct_frr']:.0%} | "
            f"{r['escapes_at_5pct_frr']:.0%} | {r['escapes_own']:.0%} / {r['false_rejects_own']:.1%} | "
            + " | ".join(f"{r['per_type'][t]:.2f}" for t in types)
            + f" | {r.get('refine_cpu_minutes', '—')} | {verdict} |"
        )
    (args.out / "refine_study.md").write_text("\n".join(lines) + "\n")
    plot(args.out / "refine_study.json", args.out / "refine_curve.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
