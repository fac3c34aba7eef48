#!/usr/bin/env bash
# Rebuilds www/models/default/, the bundle the page loads when no other is named: the small text-to-image model
# the project trained on its shapes domain (docs/default-model.md; the folders under tools/shapes/model/, made
# by the scripts beside them), converted by `control-clip bundle` as any user's checkpoint is. f16, sharded at
# 4 MiB so that the page streams, verifies and caches it piece by piece (and the browser tests see shards).
#   CONTROL_CLIP=path/to/control-clip bash www/models/make_default.sh
# The same command makes the evaluation's other bundles (docs/control-results.md): OUT=DIR writes elsewhere,
# CONTROL=DIR takes the Control-CLIP encoders from DIR (CONTROL=none: the base model alone), and
# CATEGORY_WEIGHT / STYLE_WEIGHT / PROMPT set the recommended settings.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${CONTROL_CLIP:-${CARGO_TARGET_DIR:-$HOME/.cache/control-clip/target}/debug/control-clip}
M=tools/shapes/model
OUT=${OUT:-www/models/default}
CONTROL_DIR=${CONTROL:-$M/control}
CONTROL=()
# The Control-CLIP encoders, once `control-clip finetune` has made them (docs/control-results.md); a run
# without the adapter (an ablation) has no adapter folder.
if [ -d "$CONTROL_DIR" ]; then
  CONTROL=(--category-encoder "$CONTROL_DIR/category_encoder" --style-encoder "$CONTROL_DIR/style_encoder"
           --category-weight "${CATEGORY_WEIGHT:-1}" --style-weight "${STYLE_WEIGHT:-1}")
  [ -d "$CONTROL_DIR/adapter" ] && CONTROL+=(--adapter "$CONTROL_DIR/adapter")
fi
rm -rf "$OUT"
"$BIN" bundle \
  --tokenizer $M/clip/tokenizer.json \
  --text-encoder $M/pipeline/text_encoder \
  --unet $M/pipeline/unet \
  --decoder $M/pipeline/vae \
  --scheduler-config $M/pipeline/scheduler/scheduler_config.json \
  "${CONTROL[@]}" \
  --dtype f16 --name "control-clip shapes (the project's own small model)" \
  --licence "MIT OR Apache-2.0 (trained by the project on pictures it renders itself)" \
  --steps "${STEPS:-15}" --guidance "${GUIDANCE:-4}" --width 128 --height 128 \
  --prompt "${PROMPT:-a red star with stripes}" \
  --shard-size 4M \
  --out "$OUT"
