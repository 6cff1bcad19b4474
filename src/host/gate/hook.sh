#!/bin/sh
# envclone start gate: a libvirt qemu hook (format 1).
#
# Installed by `envclone gate install` as /etc/libvirt/hooks/qemu.d/envclone
# (libvirt >= 6.5 runs every script there; libvirtd looks for hooks when it
# starts or reloads). libvirt calls it as `envclone DOMAIN OPERATION
# SUB-OPERATION EXTRA` with the domain XML on stdin; in `prepare begin` a
# non-zero exit refuses the start and libvirt shows what it wrote on stderr.
#
# It refuses to start
#  1. a domain stamped as fenced by an envclone failover (an element of the
#     namespace https://envclone.dev/xmlns/fence/1 in its <metadata>): a
#     standby serves its environment, from epoch N on;
#  2. a domain listed in GATE/protected (lines "DOMAIN ENV") unless
#     GATE/ENV.lease holds an expiry (unix seconds, this host's clock) still
#     in the future. The controller renews that lease while ENV is to run
#     here and never while a standby serves ENV, so a host that was down or
#     cut off holds a stale one: its domains wait for the controller.
# Everything else (other domains, other operations) passes.
#
# Generated: `envclone gate install` rewrites it, `envclone gate status`
# says whether it is current. POSIX sh, grep and coreutils only.

[ "$2" = prepare ] && [ "$3" = begin ] || exit 0
gate=@GATE_DIR@

refuse() {
    echo "envclone start gate: refusing to start domain $1: $2" >&2
    exit 1
}

# All of stdin, so that libvirt's write of it never meets a closed pipe.
xml=$(cat)
stamp=$(printf '%s\n' "$xml" | grep -F 'https://envclone.dev/xmlns/fence/1' | head -n 1)
if [ -n "$stamp" ]; then
    epoch=${stamp#*epoch=?}
    epoch=${epoch%%[!0-9]*}
    refuse "$1" "envclone fenced it at failover epoch ${epoch:-unknown}: a standby serves its environment. \
Run \`envclone status\` on the controller; \`envclone failback\` brings the environment back here."
fi

env=
if [ -r "$gate/protected" ]; then
    while read -r domain name; do
        if [ "$domain" = "$1" ]; then
            env=$name
            break
        fi
    done < "$gate/protected"
fi
[ -n "$env" ] || exit 0

now=$(date +%s)
expiry=
[ -r "$gate/$env.lease" ] && read -r expiry < "$gate/$env.lease"
case $expiry in '' | *[!0-9]*) expiry=0 ;; esac
[ "$expiry" -gt "$now" ] && exit 0
if [ "$expiry" -eq 0 ]; then
    why="this host holds no lease for environment $env"
else
    why="this host's lease for environment $env expired $((now - expiry)) s ago"
fi
refuse "$1" "$why (the envclone controller renews it while $env is to run here, never while a standby \
serves $env). Run \`envclone status $env\` on the controller: it renews the lease unless $env is failed over."
