#!/usr/bin/env python3
"""Score image files with a model exported by ``ear-stream export --format onnx``: ONNX Runtime, numpy and
Pillow only (``pip install onnxruntime numpy pillow``), no ear_stream.

    python tools/export/onnx_score.py EXPORT_DIR IMAGE... [--batch 16] [--threads N] [--cuda]

Prints ``score<TAB>verdict<TAB>path`` per image (verdict: score > the exported threshold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_inputs import batches, consumer_args, print_scores


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's choice)")
        parser.add_argument("--cuda", action="store_true", help="ONNX Runtime's CUDA provider (onnxruntime-gpu)")

    args, info = consumer_args(__doc__, "onnx", options)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    graph = Path(args.export_dir) / "model.onnx"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.cuda else ["CPUExecutionProvider"]
    if args.cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("--cuda: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    session = ort.InferenceSession(str(graph), opts, providers=providers)
    for paths, images in batches(args.images, args.batch, int(info["image_size"])):
        score = session.run(["score"], {info["input"]["name"]: images})[0]
        print_scores(paths, score, float(info["threshold"]))


if __name__ == "__main__":
    main()
