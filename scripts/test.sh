#!/usr/bin/env bash
# README's second command: the whole test suite, unit and end to end (the
# end-to-end tests boot real QEMU guests under libvirt in network
# namespaces they create, so this runs as root). Run install-deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
fi
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
# A suite that ran nothing is a broken suite, not a green one.
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' target/test-output.txt | awk '{s += $4} END {print s + 0}')
echo "test.sh: $passed tests passed" >&2
[ "$passed" -gt 0 ]
