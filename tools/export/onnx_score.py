#!/usr/bin/env python3
"""Score image files with a model exported by ``ear-stream export --format onnx``: ONNX Runtime, numpy and
Pillow only (``pip install onnxruntime numpy pillow``), no ear_stream.

    python tools/export/onnx_score.py EXPORT_DIR IMAGE... [--batch 16] [--threads N]

Prints ``score<TAB>verdict<TAB>path`` per image (verdict: score > the exported threshold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_inputs import batches, consumer_args, print_scores


def main() -> None:
    def threads(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's choice)")

    args, info = consumer_args(__doc__, "onnx", threads)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    graph = Path(args.export_dir) / "model.onnx"
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    for paths, images in batches(args.images, args.batch, int(info["image_size"])):
        score = session.run(["score"], {info["input"]["name"]: images})[0]
        print_scores(paths, score, float(info["threshold"]))


if __name__ == "__main__":
    main()
