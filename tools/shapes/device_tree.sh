#!/usr/bin/env bash
# The device tool copies the working tree (tracked and untracked-not-ignored files) to the GPU machine, at
# most 64 MiB; ours is over 90 MB, most of it folders the training run does not read. `stash` moves them to
# STASH (default /tmp/control-clip-stash) for the call, `restore` puts them back. Nothing else may use the
# tree in between (tests read these folders).
#   bash tools/shapes/device_tree.sh stash|restore
set -euo pipefail
cd "$(dirname "$0")/../.."
STASH=${STASH:-/tmp/control-clip-stash}
BIG=(www/models/default tools/shapes/model/pipeline tools/shapes/model/clip tests/fixtures)
case "${1:-}" in
  stash)
    [ -e "$STASH" ] && { echo "$STASH exists: restore first" >&2; exit 1; }
    for p in "${BIG[@]}"; do mkdir -p "$STASH/$(dirname "$p")"; mv "$p" "$STASH/$p"; done
    # The training scripts read the CLIP tokenizer from the fixtures.
    mkdir -p tests/fixtures && cp "$STASH/tests/fixtures/tokenizer.json" tests/fixtures/
    (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -1
    ;;
  restore)
    rm -rf tests/fixtures
    for p in "${BIG[@]}"; do mv "$STASH/$p" "$p"; done
    rm -rf "$STASH"
    git status --short
    ;;
  *) echo "usage: $0 stash|restore" >&2; exit 2 ;;
esac
