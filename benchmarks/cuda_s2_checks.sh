#!/usr/bin/env bash
# The CUDA checks of the S2 kernels, as one script for a GPU machine: the CUDA tests (flex_attention and
# group-by-group S2 against the slow reference, forward and gradients), then forward+backward timings of
# packed rows and plain rows (benchmarks/attention.py). Results land in OUT (default results/).
#   bash benchmarks/cuda_s2_checks.sh [OUT]
# Each step has its own time limit, so a slow step cannot take the later ones with it.
set -u
OUT=${1:-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/cuda-machine.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/cuda-machine.txt"

timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_s2flex.py tests/test_s2attn_packed.py tests/test_s2sink.py -k "cuda" 2>&1 | tail -15 | tee "$OUT/cuda-tests.txt"

# packed rows, the bundled model's heads (9 q / 3 kv, D 64), 16k
timeout 150 python3 benchmarks/attention.py --packed --device cuda --dtypes bf16 --seq-lens 16384 \
  --repeats 10 --output "$OUT/attention-packed-h200-16k.json" 2>&1 | tee "$OUT/attention-packed-h200.txt"
# plain rows (one document per row), 16k: S2 (and with sink tokens) group by group vs through flex_attention
# vs full
timeout 100 python3 benchmarks/attention.py --device cuda --dtypes bf16 --seq-lens 16384 --repeats 10 \
  --impls s2 s2-flex s2-sink s2-sink-flex full --output "$OUT/attention-rows-h200-16k.json" 2>&1 | tee -a "$OUT/attention-packed-h200.txt"
# packed rows with Llama-3.1-8B's heads (32 q / 8 kv, D 128), 16k
timeout 150 python3 benchmarks/attention.py --packed --device cuda --dtypes bf16 --seq-lens 16384 \
  --heads 32 --kv-heads 8 --head-dim 128 --repeats 10 \
  --output "$OUT/attention-packed-h200-16k-llama8b-heads.json" 2>&1 | tee -a "$OUT/attention-packed-h200.txt"
echo "all steps ran"
