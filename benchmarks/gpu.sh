#!/usr/bin/env bash
# The GPU checks in one short run, for a machine with CUDA and the project's dependencies:
# the training and rescoring benchmarks on the GPU and the tests of the CUDA code paths.
# Results also go to $OUT (default artifacts/gpu/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-artifacts/gpu}"
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi -L 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_model.py \
    "tests/test_rescore.py::test_gpu_bf16_scores_and_partition_independence" 2>&1 | tee "$OUT/pytest.txt"
timeout 150 "$PY" benchmarks/train.py --device cuda --updates 30 2>&1 | tee "$OUT/train_bench.txt"
timeout 200 "$PY" benchmarks/rescore.py --device cuda 2>&1 | tee "$OUT/rescore_bench.txt"
