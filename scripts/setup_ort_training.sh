#!/usr/bin/env bash
# Create .venv-ort: the client SDK with the "ort" training backend (ONNX Runtime training, no torch).
#
#   bash scripts/setup_ort_training.sh            # device environment: onnxruntime-training-cpu, no torch
#   bash scripts/setup_ort_training.sh --build    # + torch 2.13.0 CPU, transformers, peft, pytest: exports
#                                                 #   training artifacts and runs tests/client_sdk/training/test_ort_backend.py
#
# onnxruntime-training-cpu 1.19.2 (the last release; onnxruntime-training 1.19.2 is the CUDA build)
# needs onnx 1.17 and numpy < 2, and it *replaces* the onnxruntime package (same import name, a
# superset: inference sessions work as before). That is why this is a separate environment from
# .venv, and why lada-client goes in with --no-deps: its `onnxruntime>=1.18` requirement would
# pull the inference-only wheel over the training one. Its other requirements are listed here.
# VENV=<dir> chooses another location; PYTHON=<interpreter> another Python (3.8-3.12 have wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-ort}
BUILD=0
for arg in "$@"; do
    case "$arg" in
        --build) BUILD=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "setup_ort_training.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" onnxruntime-training-cpu==1.19.2 onnx==1.17.0 'numpy>=1.26,<2' \
    'tokenizers>=0.20' 'httpx>=0.27' 'cryptography>=42' 'pydantic>=2.6'
if [ "$BUILD" = 1 ]; then
    "${PIP[@]}" torch==2.13.0
    "${PIP[@]}" torch==2.13.0 'transformers>=4.57,<4.58' 'peft>=0.17' 'pytest>=8' onnx==1.17.0 'numpy>=1.26,<2'
fi
"${PIP[@]}" --no-deps -e ./client_sdk
if "$VENV/bin/python" -m pip show onnxruntime >/dev/null 2>&1; then
    echo "setup_ort_training.sh: the inference-only onnxruntime wheel got installed into $VENV; it shadows" >&2
    echo "onnxruntime-training. Remove $VENV and run this script again." >&2
    exit 1
fi
"$VENV/bin/python" - <<'EOF'
from lada_client.training.backend import available_backends
from lada_client.training.ort_backend import import_ort_training

import_ort_training()  # works with or without torch
print("training backends available:", available_backends())
EOF
