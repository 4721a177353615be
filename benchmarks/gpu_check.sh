#!/usr/bin/env bash
# One-shot GPU verification for a lent H200 (device tool): build the extension against the
# machine's own torch, run the CUDA op tests, then the op benchmark; prints a short table.
#   device run: bash benchmarks/gpu_check.sh        (writes logs to $OUT when set)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ear-gpu}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 EAR_STREAM_BUILD=cuda PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import ear_stream.model.ops as o; print('backend', o.backend(), 'cuda kernels', o.extension_has_cuda())"
python3 -m pytest -q -p no:cacheprovider tests/model/test_ops.py -k cuda 2>&1 | tee "$OUT/tests.log" | tail -5
python3 benchmarks/bench_ops.py --cpu-batch 16 --cuda-batch 256 --size 256 --repeats 20 2>&1 | tee "$OUT/bench.log" | tail -8
# training speed (issue #12): bf16 + channels_last, eager vs torch.compile, and a 300-epoch projection
python3 benchmarks/train_speed.py --device cuda --size 256 --batch 32 --steps 30 2>&1 | tee "$OUT/train_speed.log" | tail -5
