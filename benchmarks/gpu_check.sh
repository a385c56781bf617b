#!/usr/bin/env bash
# The GPU check, run once on a lent GPU machine (see README): the GPU-marked tests, GPU training
# throughput (on-device data + bf16 + channels_last vs a DataLoader baseline) and the latency
# table on the GPU (prediction vs measurement, batch 1). PARTS picks some: PARTS="tests latency";
# GPU_ARGS goes to bench_gpu.py (e.g. "--data cifar --compile").
# That machine has torch, Lightning, pandas, rich and scikit-learn but no PyPI: pydantic and optuna
# come as wheels carried in .gpu_wheels/ (pip download --python-version 3.12 --only-binary=:all:
# --platform manylinux2014_x86_64 -d .gpu_wheels pydantic optuna).
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS="${PARTS:-tests train latency}"
python3 -c "import pydantic, optuna" 2>/dev/null || python3 -m pip install -q --no-index --find-links .gpu_wheels pydantic optuna
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'bf16', torch.cuda.is_bf16_supported())"
[[ $PARTS == *tests* ]] && python3 -m pytest -q -m gpu tests/test_train.py -p no:cacheprovider 2>&1 | tail -3
[[ $PARTS == *train* ]] && python3 benchmarks/bench_gpu.py --epochs "${EPOCHS:-4}" ${GPU_ARGS:-} 2> >(grep -v Warning >&2)
[[ $PARTS == *latency* ]] && python3 benchmarks/bench_latency.py --device cuda 2> >(grep -v Warning >&2)
exit 0
