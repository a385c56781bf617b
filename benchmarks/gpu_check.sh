#!/usr/bin/env bash
# The GPU check, run once on a lent GPU machine: the GPU-marked tests (CUDA graphs train as eager
# does, bf16 + channels_last), one variant trained with and without CUDA graphs (images/s and what
# 'auto' picks), distinct candidates per hour for K workers per GPU (bench_gpu.py --candidates), and
# optionally the older throughput and latency tables. PARTS picks some: PARTS="tests graphs search".
# That machine has torch, Lightning, pandas, rich and scikit-learn but no PyPI: pydantic, optuna and
# fvcore travel as wheels in .whl/ (see the device notes; carry .whl).
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS="${PARTS:-tests graphs search}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic, optuna, fvcore" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, 'bf16', torch.cuda.is_bf16_supported())"
mbv2() { python3 -c "from mbv2_search.cli import main; main()" "$@"; }
if [[ $PARTS == *tests* ]]; then
  python3 -m pytest -q -m gpu tests/test_train.py tests/test_throughput.py -p no:cacheprovider 2>&1 | tail -15
fi
if [[ $PARTS == *graphs* ]]; then
  echo "| cuda graphs | train images/s | train s | val_acc | graphs used |"
  echo "|---|---:|---:|---:|---|"
  for mode in off on auto; do
    mbv2 train --width 0.5 --resolution 32 --stem-stride 1 --strides 1,1,2,2,1,2,1 --dataset digits --epochs 6 \
      --batch-size 128 --device cuda --cuda-graphs $mode --run-dir /tmp/gc-$mode --json 2>/dev/null |
      python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"| $mode | {r['train_images_per_second']:,.0f} | {r['train_seconds']:.1f} | {r['val_acc']:.4f} | {r['cuda_graphs']} |\")"
  done
fi
[[ $PARTS == *search* ]] && python3 benchmarks/bench_gpu.py --candidates --epochs "${EPOCHS:-5}" --workers-per-gpu "${KS:-1,2,4,8}" 2> >(grep -v Warning >&2)
[[ $PARTS == *train* ]] && python3 benchmarks/bench_gpu.py --epochs 4 ${GPU_ARGS:-} 2> >(grep -v Warning >&2)
[[ $PARTS == *latency* ]] && python3 benchmarks/bench_latency.py --device cuda 2> >(grep -v Warning >&2)
exit 0
