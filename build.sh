#!/usr/bin/env bash
# control-clip build entry point.
#
#   ./build.sh          build the wasm package (release, wasm-bindgen --target web) into www/pkg/
#   ./build.sh serve    build, then serve www/ on http://127.0.0.1:8080
#   ./build.sh test     every test: Rust tests natively (wgpu on Vulkan/lavapipe + the CPU backend),
#                       then the wasm package in headless Chromium (WebGPU + wasm CPU)
#
# Installs the wasm32 target and the exact wasm-bindgen-cli version of Cargo.lock when missing.
# CARGO_TARGET_DIR defaults to ~/.cache/control-clip/target so that clones share one build cache.
set -euo pipefail
cd "$(dirname "$0")"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/control-clip/target}"
TOOLS="${CONTROL_CLIP_TOOLS:-$HOME/.cache/control-clip/tools}"
export PATH="$TOOLS/bin:$PATH"
# wgpu warns without it on headless machines.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

log() { printf '\n== %s\n' "$*" >&2; }

wasm_bindgen_version() {
  # The version of the wasm-bindgen crate that Cargo.lock pins; the CLI must match it exactly.
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

ensure_wasm_tools() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  local want; want="$(wasm_bindgen_version)"
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    log "installing wasm-bindgen-cli $want into $TOOLS"
    # --locked first; if the registry lacks a crate the CLI's own lock file names (a mirror that has not
    # got a yanked or newer release), resolve its dependencies afresh — the CLI version stays exact.
    cargo install --locked --root "$TOOLS" wasm-bindgen-cli --version "$want" ||
      cargo install --root "$TOOLS" wasm-bindgen-cli --version "$want"
  fi
}

build_wasm() {
  ensure_wasm_tools
  log "building the wasm package (profile wasm-release: Cargo.toml says why)"
  local start=$SECONDS
  cargo build --profile wasm-release --lib --target wasm32-unknown-unknown
  rm -rf www/pkg
  # Function names are 8.6 MB of the module and only help reading a trace: dropped from the download
  # unless WASM_NAMES=1 (then wasm traps name the Rust function).
  local names=(--remove-name-section --remove-producers-section)
  [ "${WASM_NAMES:-0}" = 1 ] && names=()
  wasm-bindgen --target web --no-typescript "${names[@]}" --out-dir www/pkg \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/control_clip.wasm"
  log "www/pkg/control_clip_bg.wasm: $(stat -c %s www/pkg/control_clip_bg.wasm) bytes ($((SECONDS - start)) s)"
}

ensure_browser_deps() {
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    log "installing the browser-test npm packages (tests/browser/package-lock.json)"
    (cd tests/browser && npm ci --no-audit --no-fund)
  fi
}

case "${1:-build}" in
  build)
    build_wasm
    ;;
  serve)
    build_wasm
    log "serving www/ on http://127.0.0.1:8080 (Ctrl+C to stop)"
    exec node tests/browser/serve.mjs www 8080
    ;;
  test)
    log "Rust tests (native: wgpu + CPU backends)"
    cargo test --all-targets
    build_wasm
    ensure_browser_deps
    log "browser tests (headless Chromium: WebGPU + wasm CPU)"
    (cd tests/browser && npm test)
    ;;
  *)
    echo "usage: ./build.sh [build|serve|test]" >&2
    exit 2
    ;;
esac
