"""Quality and speed study: saliency variants vs ``none`` vs RIAD at the same *training time*.

Every variant trains the same U-Net (size, width, seed, batch, lr) for the same
budget on ``--threads`` threads — CPU minutes of its own process by default
(``--clock cpu``), so that variants sharing a busy machine still get equal
compute — (a variant that costs more per step gets fewer steps), ``--parallel``
variants at a time, each in its own process.
The test set is split once, deterministically by SHA-1 of the file name, into a
small labelled **validation** subset (``--val-fraction``) and the **reported**
test subset. Post-processing choices (box filter, border band) are selected per
variant on the validation subset plus nothing else; the figures reported are on
the disjoint test subset. The learning curve records the held-out normal loss
and, for the record only (never used for stopping or selection), the test AUROC.

    python benchmarks/study.py ../shared/data --category magnetic_tile --image-size 128 \\
        --variants none,spectral,stats,self,riad --minutes 30 --threads 1 --parallel 2

Writes OUT/study.md, OUT/study.json, OUT/curves.png and, per variant, its model,
HTML report (validation-chosen scoring) and curve.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def split_of(path: Path, val_fraction: float) -> str:
    """'val' or 'test', from a salted SHA-1 of the file name: stable across machines and runs.

    Salted because the dataset's own good/defect split was made by the plain
    SHA-1 of the name, which would correlate with ours (all good images in val).
    """
    h = int(hashlib.sha1(f"ear-stream-val:{path.name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "test"


def time_inference(pipe, images: torch.Tensor) -> tuple[float, float]:
    """(median ms/image at batch 1, images/s at batch 32) on the given images."""
    pipe.score_tensor(images[:1])  # warm-up
    singles = []
    for i in range(min(16, images.shape[0])):
        t0 = time.perf_counter()
        pipe.score_tensor(images[i : i + 1])
        singles.append((time.perf_counter() - t0) * 1000)
    batch = images[:64]
    t0 = time.perf_counter()
    for i in range(0, batch.shape[0], 32):
        pipe.score_tensor(batch[i : i + 32])
    return statistics.median(singles), batch.shape[0] / (time.perf_counter() - t0)


def scoring_candidates(size: int) -> list[dict]:
    """Post-processing grid searched on the validation subset: box × border band.

    The model's own resolution default (box 21·S/256, border box//2) comes first, so that it wins ties
    and is the "default scoring" column of the table.
    """
    from ear_stream.model.config import ScoringConfig

    default = ScoringConfig().resolved(size)
    grid = [{"box": default.box, "border": default.border, "normal_map": False}]
    for normal in (False, True):
        for box in (default.box, 5, 1):
            for border in sorted({0, size // 32, size // 16, default.border}):
                cand = {"box": box, "border": border, "normal_map": normal}
                if cand not in grid:
                    grid.append(cand)
    return grid


def run_child(args: argparse.Namespace) -> None:
    """Train + evaluate one variant in this process (spawned by the parent with a thread budget)."""
    torch.set_num_threads(args.threads)
    from sklearn.metrics import roc_auc_score

    from ear_stream.inspect.calibration import split_holdout
    from ear_stream.inspect.evaluation import compute_metrics, evaluate, write_report
    from ear_stream.inspect.pipeline import Pipeline, fit_normal_map, select
    from ear_stream.inspect.thresholds import recalibrate
    from ear_stream.inspect.training import NORMAL_MAP_IMAGES, RunLimits, Trainer
    from ear_stream.io.datasets import load_tensor, test_samples, train_images
    from ear_stream.model.artifact import load_manifest
    from ear_stream.model.config import ModelConfig, TrainConfig

    name = args.child
    out = args.out / name
    samples = test_samples(args.data_root, args.category)
    images = load_tensor([s.path for s in samples], args.image_size, progress=False)
    split = np.array([split_of(s.path, args.val_fraction) for s in samples])
    sub = {k: np.where(split == k)[0] for k in ("val", "test")}

    def metrics(idx, scores, maps, threshold=1.0):
        return compute_metrics([samples[i] for i in idx], scores[idx], select(maps, idx), threshold, 0.0)

    test_labels = np.array([samples[i].defect != "good" for i in sub["test"]])

    def on_curve(rec: dict, pipe: Pipeline) -> dict:
        """Test image AUROC at this point of training: recorded, never used for any choice."""
        x = images[sub["test"]]
        scores = np.concatenate([pipe.score_tensor(x[i : i + 32]).scores for i in range(0, x.shape[0], 32)])
        return {"test_image_auroc": float(roc_auc_score(test_labels, scores))}

    # e.g. spectral+keep@m8: keep_context on, mosaic scale 8; spectral+sim+head: simulated defects + learned head
    spec, _, fixed_m = name.partition("@m")
    base, *flags = spec.split("+")
    method, saliency = ("riad", "none") if base == "riad" else ("ear", base)
    cfg = ModelConfig(
        image_size=args.image_size,
        saliency=saliency,
        base_channels=args.width,
        method=method,
        kernel_size=3,
        keep_context="keep" in flags,
        head="head" in flags,
    )
    if args.grid and saliency not in ("none", "dino", "binary"):
        cfg.saliency_params = {"grid": args.grid}
    tcfg = TrainConfig(
        epochs=10_000,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        simulate=args.simulate if ("sim" in flags or "head" in flags) else 0.0,
        precision=args.precision,
    )
    t0 = time.perf_counter()
    model = (
        out
        if args.rescore
        else Trainer(
            args.data_root,
            args.category,
            out,
            cfg,
            tcfg,
            mosaic_scale=int(fixed_m) if fixed_m else (None if args.mosaic_scale == "auto" else int(args.mosaic_scale)),
            device="cpu",
            limits=RunLimits(
                max_minutes=args.minutes,
                curve_every_minutes=args.curve_every,
                on_curve=on_curve,
                progress=False,
                clock=args.clock,
            ),
        )
        .setup()
        .run()
    )
    pipe = Pipeline.from_artifact(model, device="cpu")
    manifest = json.loads((Path(model) / "manifest.json").read_text())
    train_s = manifest["training"]["seconds"] if args.rescore else time.perf_counter() - t0
    # the normal map comes from training images only (the same split train_model used)
    files = train_images(args.data_root, args.category)
    train_idx, _ = split_holdout(len(files), tcfg.holdout_fraction, tcfg.seed)
    normal = (
        None
        if method == "riad"
        else fit_normal_map(
            pipe, load_tensor([files[i] for i in train_idx[:NORMAL_MAP_IMAGES]], args.image_size, progress=False)
        )
    )

    # one reconstruction pass over the whole test set, then every scoring candidate on it
    recon, attention_ok = [], True
    with torch.no_grad():
        for i in range(0, len(samples), 32):
            x = images[i : i + 32]
            if method == "riad":
                attention_ok = False
                break
            recon.append(pipe.recover(x)[3])
    candidates = []
    base_sc = pipe.config.scoring
    grid = scoring_candidates(args.image_size) if attention_ok else [{}]
    if cfg.head:  # a head model scores its own map: the normal map does not apply; its map may be logits
        grid = [c for c in grid if not c.get("normal_map")]
        grid += [{**c, "head_map": "logit"} for c in grid]
    for cand in grid:
        sc = dataclasses.replace(base_sc, **cand)
        if attention_ok:
            rec = torch.cat(recon)
            scores, maps = [], []
            pipe.config.scoring, pipe.normal_map = sc, normal
            for i in range(0, len(samples), 32):
                s, m = pipe.score_recon(images[i : i + 32], rec[i : i + 32], True)
                scores.append(s.numpy())
                maps.append(m.half())
            pipe.config.scoring = base_sc
            scores, maps = np.concatenate(scores), torch.cat(maps)
        else:
            res, mat = evaluate(pipe, args.data_root, args.category, progress=False, samples=samples, images=images)
            scores, maps = res.scores, mat["maps"]
        val = metrics(sub["val"], scores, maps)
        candidates.append({"scoring": cand, "val_image_auroc": val.image_auroc, "scores": scores, "maps": maps})
    best = max(candidates, key=lambda c: c["val_image_auroc"])
    test = metrics(sub["test"], best["scores"], best["maps"])
    default = candidates[0]  # the model's resolution default
    test_default = metrics(sub["test"], default["scores"], default["maps"])
    operating = operating_points(manifest, default["scores"], samples, sub)

    chosen = dataclasses.replace(base_sc, **best["scoring"])
    pipe.config.scoring = chosen
    pipe.normal_map = normal
    if chosen != base_sc:  # the stored threshold belongs to the default scoring: the report's rates need their own
        recalibrate(pipe, load_manifest(model), args.data_root)
    res, mat = evaluate(pipe, args.data_root, args.category, progress=False, samples=samples, images=images)
    write_report(out.with_suffix(".html"), pipe, res, mat, f"{name}: {args.category} (scoring chosen on validation)")
    ms1, ips = time_inference(pipe, images[sub["test"]])
    row = {
        "variant": name,
        "m": pipe.config.mosaic_scale,
        "saliency_params": pipe.config.saliency_params,
        "steps": manifest["training"]["steps"],
        "r10": (manifest["training"].get("mosaic_estimate") or {}).get("r10"),
        "train_s": train_s,
        "scoring_chosen_on_val": best["scoring"],
        "val_image_auroc": best["val_image_auroc"],
        "val_by_scoring": [{**c["scoring"], "val_image_auroc": c["val_image_auroc"]} for c in candidates],
        "image_auroc": test.image_auroc,
        "pixel_auroc": test.pixel_auroc,
        "image_auroc_default_scoring": test_default.image_auroc,
        "pixel_auroc_default_scoring": test_default.pixel_auroc,
        "aupro_30": test.aupro_30,
        "image_f1_max": test.image_f1_max,
        "operating_points_default_scoring": operating,
        "recovery": manifest["training"].get("recovery"),
        "precision": manifest["training"].get("precision"),
        "per_defect": {d: v["image_auroc"] for d, v in test.per_defect.items()},
        "n_test": len(sub["test"]),
        "n_val": len(sub["val"]),
        "ms_per_image_b1": ms1,
        "images_per_s_b32": ips,
        "curve": [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()],
    }
    (args.out / f"{name}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


#: threshold policies whose false rejects and escapes the study reports (the default is chosen on validation)
POLICIES = ("sigma:3", "fpr:0.01", "fpr:0.05", "simf1")


def operating_points(manifest: dict, scores: np.ndarray, samples, sub: dict, policies=POLICIES) -> dict:  # type: ignore[no-untyped-def]
    """False-reject and escape rates per policy, thresholds from the model's own calibration (held-out good
    images and their simulated defects; no test image), on the validation and the reported subsets."""
    from ear_stream.inspect.thresholds import image_threshold, parse_policy

    cal = manifest["calibration"]
    good, sim = np.asarray(cal["scores"]), cal.get("simulated_scores")
    labels = np.array([s.defect != "good" for s in samples])
    out = {}
    for policy in policies:
        try:
            thr = image_threshold(parse_policy(policy), good, simulated=sim)
        except ValueError:
            continue
        row = {"threshold": thr}
        for part in ("val", "test"):
            idx = sub[part]
            flagged = ~(scores[idx] <= thr)
            row[part] = {
                "false_reject_rate": float(flagged[~labels[idx]].mean()),
                "escape_rate": float((~flagged[labels[idx]]).mean()),
            }
        out[policy] = row
    return out


def spawn_all(args: argparse.Namespace, variants: list[str]) -> None:
    """Run the children ``--parallel`` at a time, each pinned to ``--threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    pending, running = list(variants), []
    base = [sys.executable, __file__, *sys.argv[1:]]
    while pending or running:
        while pending and len(running) < args.parallel:
            v = pending.pop(0)
            log = open(args.out / f"{v}.log", "w")  # noqa: SIM115 - closed when the child ends
            running.append(
                (v, subprocess.Popen([*base, "--child", v], env=env, stdout=log, stderr=subprocess.STDOUT), log)
            )
        time.sleep(2)
        for item in list(running):
            v, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"{v}: exit {proc.returncode}", flush=True)


def write_summary(args: argparse.Namespace, variants: list[str]) -> None:
    from ear_stream.inspect.visualize import line_chart_png

    rows = [json.loads((args.out / f"{v}.json").read_text()) for v in variants if (args.out / f"{v}.json").is_file()]
    lines = [
        f"Category `{args.category}`, {args.image_size} px, width {args.width}, batch {args.batch_size}, lr {args.lr}, "
        f"seed {args.seed}, **{args.minutes} {args.clock} min of training on {args.threads} thread(s) each**, {args.parallel} at a "
        f"time; validation subset {rows[0]['n_val'] if rows else '?'} test images (SHA-1 split, fraction "
        f"{args.val_fraction}), reported subset {rows[0]['n_test'] if rows else '?'} images.",
        "",
        "| variant | m | steps | scoring (chosen on val) | val AUROC | **test image AUROC** | test AUROC, default scoring "
        "| pixel AUROC | ms/image b=1 | images/s b=32 | per-defect image AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"{d} {v:.3f}" for d, v in r["per_defect"].items())
        sc = ", ".join(f"{k} {v}" for k, v in r["scoring_chosen_on_val"].items()) or "model default"
        pix = "n/a" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['m']} | {r['steps']} | {sc} | {r['val_image_auroc']:.3f} | **{r['image_auroc']:.3f}** | "
            f"{r['image_auroc_default_scoring']:.3f} | {pix} | {r['ms_per_image_b1']:.1f} | {r['images_per_s_b32']:.1f} | {per} |"
        )
    lines += [
        "",
        "| variant | steps | recovery error / flat | AUPRO@0.3 | image F1-max | "
        + " | ".join(f"{p}: val FRR / escapes | {p}: **test FRR / escapes**" for p in POLICIES)
        + " |",
        "|---|---|---|---|---|" + "---|---|" * len(POLICIES),
    ]
    for r in rows:
        ops_ = r.get("operating_points_default_scoring") or {}
        cells = []
        for p in POLICIES:
            o = ops_.get(p)
            if o is None:
                cells += ["n/a", "n/a"]
                continue
            v, t = o["val"], o["test"]
            cells += [
                f"{v['false_reject_rate']:.1%} / {v['escape_rate']:.1%}",
                f"**{t['false_reject_rate']:.1%} / {t['escape_rate']:.1%}**",
            ]
        rec = (r.get("recovery") or {}).get("ratio_to_flat")
        aupro = r.get("aupro_30")
        lines.append(
            f"| {r['variant']} | {r['steps']} | {'n/a' if rec is None else f'{rec:.2f}'} | "
            f"{'n/a' if aupro is None else f'{aupro:.3f}'} | {r.get('image_f1_max', float('nan')):.3f} | "
            + " | ".join(cells)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    (args.out / "study.md").write_text(text + "\n")
    (args.out / "study.json").write_text(json.dumps(rows, indent=2))
    loss = {r["variant"]: [(c["minutes"], c["heldout_loss"]) for c in r["curve"]] for r in rows}
    auc = {r["variant"]: [(c["minutes"], c.get("test_image_auroc")) for c in r["curve"]] for r in rows}
    (args.out / "curves_loss.png").write_bytes(line_chart_png(loss, "held-out normal loss", "minutes", "loss"))
    (args.out / "curves_auroc.png").write_bytes(
        line_chart_png(auc, "test image AUROC (record only)", "minutes", "AUROC")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_root", type=Path)
    p.add_argument("--category", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    p.add_argument(
        "--variants",
        default="none,spectral,stats,self,riad",
        help="comma-separated; '+keep' adds keep_context, '@mN' fixes the mosaic scale (a sweep)",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per variant (see --clock)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="budget in the process's CPU minutes (equal compute on a shared machine) or wall-clock minutes",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    p.add_argument("--parallel", type=int, default=2, help="variants trained at the same time")
    p.add_argument("--curve-every", type=float, default=5.0, help="minutes between learning-curve points")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--simulate", type=float, default=0.5, help="share of images with a simulated defect (+sim)")
    p.add_argument("--precision", default="auto", help="U-Net numeric path of training and scoring")
    p.add_argument("--grid", type=int, default=None, help="attention grid of the weight-free variants")
    p.add_argument("--mosaic-scale", default="auto")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--summary-only", action="store_true", help="rewrite study.md from the per-variant JSON files")
    p.add_argument("--rescore", action="store_true", help="re-evaluate the models already in OUT (no training)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    if args.child:
        run_child(args)
        return
    if not args.summary_only:
        spawn_all(args, variants)
    write_summary(args, variants)


if __name__ == "__main__":
    main()
