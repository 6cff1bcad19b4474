#!/usr/bin/env bash
# Builds the controller and the in-guest agent. The agent is linked
# statically (glibc, crt-static) so it runs in any Linux guest; the
# controller links libvirt and libssh2 dynamically. Usage: build.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
[ "${1:-}" = "--release" ] && profile=(--release)
cargo build "${profile[@]}" --workspace --all-targets
# --target keeps the static flag off build scripts and off the controller.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build "${profile[@]}" -p envclone-agent --bin envclone-agent --target x86_64-unknown-linux-gnu
