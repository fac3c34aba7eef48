#!/usr/bin/env bash
# Rebuilds www/models/default/, the bundle the page loads when no other is named: the project's tiny test
# fixtures (random weights, so its images are noise) with Control-CLIP encoders, in f16, sharded at 256 KiB
# (far below the 32 MiB default) so that the browser tests load, verify and cache a sharded bundle.
#   CONTROL_CLIP=path/to/control-clip bash www/models/make_default.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CONTROL_CLIP:-${CARGO_TARGET_DIR:-$HOME/.cache/control-clip/target}/debug/control-clip}
F=tests/fixtures
rm -rf www/models/default
"$BIN" bundle \
  --tokenizer $F/tokenizer.json \
  --text-encoder $F/clip_text/sd-mini-f16 \
  --unet $F/unet/sd-tiny \
  --decoder $F/tiny_decoder/taesd-narrow \
  --scheduler-config $F/pipeline/ddim-2-steps/scheduler_config.json \
  --category-encoder $F/control/encoders/category_lora \
  --style-encoder $F/control/encoders/style_full \
  --adapter $F/control/encoders/adapter \
  --dtype f16 --name "control-clip demo bundle (tiny, random weights)" \
  --licence "MIT OR Apache-2.0 (the project's own test fixtures)" \
  --steps 4 --guidance 7.5 --width 64 --height 64 --category-weight 1 --style-weight 0.8 \
  --shard-size 256K \
  --out www/models/default
