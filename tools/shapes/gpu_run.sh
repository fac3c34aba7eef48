#!/usr/bin/env bash
# The default model's whole training run on a lent GPU machine (docs/default-model.md): one command.
#
#   bash tools/shapes/gpu_run.sh OUT [train_all.py flags]
#
# Expects the diffusers wheel (and importlib_metadata, which it needs and the machine lacks) in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
# Writes OUT/log.txt and the archives of train_all.py (at most 8 files, each under 16 MiB).
# The working tree must travel in 64 MiB: `bash tools/shapes/device_tree.sh stash` before the call,
# `restore` after it. Run 2 of docs/default-model.md carried the models it continued in .init/ (ignored).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="$1"; shift
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
python3 tools/shapes/train_all.py --work /tmp/w --out "$OUT" --device cuda "$@" 2>&1 | tee "$OUT/log.txt"
