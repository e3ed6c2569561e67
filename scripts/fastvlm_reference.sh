#!/usr/bin/env bash
# The FastVLM reference tests in their own environment (docs/FASTVLM_FORMAT.md): transformers'
# FastVLM needs timm, and timm a torchvision that loads with torch, which the project's torch
# 2.13 has none of. About 5.7 GB; kept out of the default set-up.
#   scripts/fastvlm_reference.sh [VENV_DIR]      (default: .venv-fastvlm)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-fastvlm}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 timm "transformers>=5.25,<6"
  # The project's own dependencies, without its torch pin (the export extra's torch==2.13).
  "$venv/bin/pip" install -q --no-deps -e .
  "$venv/bin/pip" install -q "onnxruntime>=1.23,<1.33" "tokenizers>=0.20,<0.24" numpy "Pillow>=12.2" \
    platformdirs "jinja2>=3.1" "PySide6-Essentials>=6.7,!=6.12.0,<6.12" onnx pytest pytest-qt
fi
QT_QPA_PLATFORM=offscreen "$venv/bin/python" -m pytest -p no:cacheprovider -q -m fastvlm_reference tests/test_fastvlm_reference.py
