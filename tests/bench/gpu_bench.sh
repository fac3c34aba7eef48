#!/usr/bin/env bash
# The GPU benchmark (tests/bench/bench_gpu.py) on a lent GPU machine, as one command:
#
#   bash tests/bench/gpu_bench.sh OUT [bench_gpu.py flags]
#
# Prepared here, before the call (nothing of it is tracked):
#   cargo build --release --bin control-clip && mkdir -p .bin && cp "$CARGO_TARGET_DIR/release/control-clip" .bin/
#   the diffusers wheel (and importlib_metadata) in .whl/ (tools/shapes/gpu_run.sh says how), and the Vulkan
#   loader's packages in .gl/ (the device tool's README: libvulkan1 and the GL/EGL set);
#   carry .bin, .whl and .gl. Writes OUT/benchmarks.md (docs/benchmarks.md with the GPU section
#   rewritten), OUT/gpu-bench.jsonl (one line per model) and OUT/log.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="$1"; shift
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/log.txt"
cp docs/benchmarks.md "$OUT/benchmarks.md"
python3 tests/bench/bench_gpu.py --binary .bin/control-clip --doc "$OUT/benchmarks.md" --jsonl "$OUT/gpu-bench.jsonl" "$@" 2>&1 | tee -a "$OUT/log.txt"
