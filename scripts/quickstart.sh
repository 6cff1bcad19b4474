#!/usr/bin/env bash
# README's first command: install what is missing, build, bring up the lab
# and run the main job on it: a live clone of the running demo environment.
# Run as root on Debian 12. Running it again is harmless: the lab is kept,
# and the clone of an earlier run is destroyed and made anew.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== building (release)" >&2
scripts/build.sh --release
envclone=target/release/envclone
clone=demo-qs
echo "== bringing up the lab" >&2
"$envclone" lab up
eval "$("$envclone" lab env)"
echo "== checking the lab environment end to end" >&2
"$envclone" check --live
if "$envclone" -q destroy "$clone" --json | grep -q '"existed": true'; then
    echo "== destroyed the clone '$clone' an earlier quick start made" >&2
fi
echo "== main job: a live clone of the running demo environment, memory and all" >&2
"$envclone" clone demo --name "$clone" --start resume
echo "== the clones" >&2
"$envclone" clones
echo "== the clone's web, through the clone's gateway namespace (the source runs on, untouched)" >&2
ip netns exec "envclone-c-$clone" curl -sS --max-time 30 http://10.77.1.11/
cat <<EOT

The lab and the clone '$clone' run. Point your shell at the lab and look around:
  eval "\$($PWD/$envclone lab env)"
  $PWD/$envclone ssh $clone web -- cat /etc/demo/app.env      # the clone's web
  $PWD/$envclone ssh demo web -- cat /etc/demo/app.env        # the source's
  ip netns exec envclone-c-$clone curl http://10.77.1.11/
  $PWD/$envclone clones
  $PWD/$envclone destroy $clone    # removes the clone, leaves demo as it is
  $PWD/$envclone lab status
  $PWD/$envclone lab down          # removes everything the lab made, clones included
EOT
