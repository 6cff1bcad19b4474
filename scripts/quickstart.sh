#!/usr/bin/env bash
# README's first command: install what is missing, build, bring up the lab
# and run the main job on it. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== building (release)" >&2
scripts/build.sh --release
envclone=target/release/envclone
echo "== bringing up the lab" >&2
"$envclone" lab up
eval "$("$envclone" lab env)"
echo "== checking the lab environment end to end" >&2
"$envclone" check --live
echo "== main job: a consistent snapshot of the whole demo environment" >&2
"$envclone" snapshot demo --label quickstart
"$envclone" snapshots demo
cat <<EOT

The lab runs. Point your shell at it and look around:
  eval "\$($PWD/$envclone lab env)"
  $PWD/$envclone ssh demo web -- cat /etc/demo/app.env
  $PWD/$envclone snapshots demo
  $PWD/$envclone lab status
  $PWD/$envclone lab down        # removes everything the lab made
EOT
