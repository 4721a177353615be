"""INT8 post-training quantisation (PT2E, x86 inductor quantizer) of a model's U-Net, against fp32.

    pip install --no-deps torchao   # PT2E lives in torchao now; not a dependency of ear-stream
    python benchmarks/int8_ptq.py MODEL_DIR ../shared/data --category magnetic_tile

Calibrated on the model's own held-out good images (the hold-out split of its manifest), then
image and pixel AUROC on the whole labelled test set for fp32 and INT8 side by side, and the U-Net's
ms/image (inductor-compiled INT8 vs eager fp32). ``--precision int8`` would be offered only if image
AUROC stayed within 0.01 of fp32 (docs/design.md, "Precision").
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
    p.add_argument("--time", action="store_true", help="also compile the INT8 graph and time it (minutes)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from ear_stream.inspect.calibration import split_holdout
    from ear_stream.inspect.evaluation import evaluate
    from ear_stream.inspect.pipeline import Pipeline, load_images
    from ear_stream.io.datasets import test_samples, train_images

    pipe = Pipeline.from_artifact(args.model, device="cpu", precision="fp32")
    manifest = json.loads((args.model / "manifest.json").read_text())
    t = manifest["training"]
    files = train_images(args.data_root, args.category)
    _, hold = split_holdout(len(files), float(t["holdout_fraction"]), int(t["seed"]))
    held = load_images(pipe.config, [files[i] for i in hold], progress=False)
    samples = test_samples(args.data_root, args.category)
    images = load_images(pipe.config, [s.path for s in samples], progress=False)

    fp32, _ = evaluate(pipe, args.data_root, args.category, 32, progress=False, samples=samples, images=images)

    # calibration inputs: what the U-Net sees, the excised held-out good images
    with torch.no_grad():
        composites = pipe.recover(held)[1]
    unet = pipe.unet.eval().to(memory_format=torch.contiguous_format)
    example = (composites[:8].contiguous(),)
    batch = torch.export.Dim("batch", min=1, max=256)
    exported = torch.export.export(unet, example, dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, composites.shape[0], 8):
            prepared(composites[i : i + 8].contiguous())
    int8 = convert_pt2e(prepared)
    pipe._unet_forward = lambda x: int8(x.contiguous())  # the converted graph in place of the U-Net
    q, _ = evaluate(pipe, args.data_root, args.category, 32, progress=False, samples=samples, images=images)
    out = {
        "model": str(args.model),
        "n_images": len(samples),
        "calibration_images": int(composites.shape[0]),
        "image_auroc": {"fp32": fp32.image_auroc, "int8": q.image_auroc},
        "pixel_auroc": {"fp32": fp32.pixel_auroc, "int8": q.pixel_auroc},
        "image_auroc_drop": fp32.image_auroc - q.image_auroc,
        "score_rel_diff_median": float(np.median(np.abs(q.scores - fp32.scores) / np.abs(fp32.scores).clip(1e-6))),
    }
    if args.time:
        x = images[:32].contiguous()
        compiled = torch.compile(int8)
        with torch.no_grad():
            compiled(x)
            t0 = time.perf_counter()
            for _ in range(3):
                compiled(x)
            out["int8_unet_ms_per_image"] = (time.perf_counter() - t0) / 3 / 32 * 1000
            t0 = time.perf_counter()
            for _ in range(3):
                unet(x)
            out["fp32_unet_ms_per_image"] = (time.perf_counter() - t0) / 3 / 32 * 1000
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
