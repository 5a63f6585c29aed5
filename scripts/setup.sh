#!/usr/bin/env bash
# Set up spectral in ./.venv: torch (CPU build where no GPU is visible), the package with its
# dev extras, and a Chromium for static figure export (kaleido). Safe to run again.
#   PYTHON=python3.12 ./scripts/setup.sh        choose the interpreter
#   TORCH_SPEC="torch==2.6.0" ./scripts/setup.sh  choose the torch build yourself
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
echo "setup: ready (.venv/bin/spectral)"
