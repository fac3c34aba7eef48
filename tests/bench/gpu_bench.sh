#!/usr/bin/env bash
# The GPU benchmark (tests/bench/bench_gpu.py) on a lent GPU machine, as one command:
#
#   bash tests/bench/gpu_bench.sh OUT [bench_gpu.py flags]
#
# Prepared here, before the call (nothing of it is tracked):
#   the CLI, stripped and gzipped into .bin/control-clip.gz (the dev profile's binary builds every crate at
#   opt-level 3 and is warm here: `strip -o /tmp/cc $CARGO_TARGET_DIR/debug/control-clip && mkdir -p .bin &&
#   gzip -9 -c /tmp/cc > .bin/control-clip.gz`, 23 MB; or a release build the same way),
#   the diffusers wheel (and importlib_metadata) in .whl/ (tools/shapes/gpu_run.sh says how), and the Vulkan
#   loader's packages in .gl/ (the device tool's README: libvulkan1 and the GL/EGL set);
#   carry .bin, .whl and .gl (tools/shapes/device_tree.sh stash keeps the tree within 64 MiB). Writes OUT/benchmarks.md (docs/benchmarks.md with the GPU section
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
gunzip -c .bin/control-clip.gz > /tmp/control-clip && chmod +x /tmp/control-clip || exit 1
python3 tests/bench/bench_gpu.py --binary /tmp/control-clip --doc "$OUT/benchmarks.md" --jsonl "$OUT/gpu-bench.jsonl" "$@" 2>&1 | tee -a "$OUT/log.txt"
