#!/usr/bin/env python3
"""Score image files with a model exported by ``ear-stream export --format openvino``: OpenVINO, numpy and
Pillow only (``pip install openvino numpy pillow``), no ear_stream.

    python tools/export/openvino_score.py EXPORT_DIR IMAGE... [--batch 16] [--precision f32|bf16]

Prints ``score<TAB>verdict<TAB>path`` per image (verdict: score > the exported threshold). ``--precision``
is OpenVINO's INFERENCE_PRECISION_HINT (default f32: the exact path; bf16 where the CPU has bf16 units is
faster, within export.json's ``tolerance.score_rtol_bf16`` of max(score, threshold)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_inputs import batches, consumer_args, print_scores


def main() -> None:
    def precision(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--precision", choices=("f32", "bf16"), default="f32")

    args, info = consumer_args(__doc__, "openvino", precision)
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(Path(args.export_dir) / "model.xml"))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": args.precision})
    for paths, images in batches(args.images, args.batch, int(info["image_size"])):
        result = compiled(images)
        print_scores(paths, result[compiled.outputs[0]], float(info["threshold"]))


if __name__ == "__main__":
    main()
