#!/usr/bin/env bash
# The GPU check, run once on a lent GPU machine (see README): the GPU-marked tests, then GPU
# training throughput (on-device data + bf16 + channels_last vs a DataLoader baseline).
# That machine has torch, Lightning, pandas, rich and scikit-learn but no PyPI: pydantic comes as
# wheels carried in .gpu_wheels/ (pip download --python-version 3.12 ... pydantic).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --find-links .gpu_wheels pydantic
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'bf16', torch.cuda.is_bf16_supported())"
python3 -m pytest -q -m gpu tests/test_train.py -p no:cacheprovider 2>&1 | tail -3
python3 benchmarks/bench_gpu.py --epochs "${EPOCHS:-4}" 2> >(grep -v Warning >&2)
