#!/usr/bin/env bash
# Builds the controller and the in-guest agent. The agent is linked
# statically (glibc, crt-static) so it runs in any Linux guest; the
# controller links libvirt and libssh2 dynamically.
# Usage: build.sh            debug build of everything, tests included (scripts/test.sh)
#        build.sh --release  release build of the two binaries only (quick start)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--release" ]; then
    profile=(--release)
    cargo build --release --workspace --bins
else
    profile=()
    cargo build --workspace --all-targets
fi
# --target keeps the static flag off build scripts and off the controller.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build "${profile[@]}" -p envclone-agent --bin envclone-agent --target x86_64-unknown-linux-gnu
