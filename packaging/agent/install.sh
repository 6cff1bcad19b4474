#!/bin/sh
# Installs envclone-agent in a guest (or in an image tree with --root):
#   - the static binary as /usr/bin/envclone-agent, mode 0755, owned by root;
#   - /etc/envclone/hooks.d, where freeze hooks go;
#   - with --authorized-key FILE, the controller's public key in root's
#     authorized_keys, pinned to the agent (see authorized_keys.line).
# Running it again changes nothing. POSIX sh: runs under busybox too.
#
# Usage: install.sh [--binary PATH] [--authorized-key PUBKEY_FILE]
#                   [--authorized-keys-file PATH] [--without-restrict] [--root DIR]
#   --binary PATH            the agent to install (default: envclone-agent next to
#                            this script)
#   --authorized-key FILE    an OpenSSH public key line (`ssh-ed25519 AAAA... comment`)
#   --authorized-keys-file   where to add it (default: /root/.ssh/authorized_keys)
#   --without-restrict       spell out no-pty,no-port-forwarding,... instead of
#                            `restrict`, for dropbear older than 2022.83
#   --root DIR               install below DIR instead of / (image building)
set -eu
# Nothing here wants pathname expansion; a key line must not trigger it.
set -f

AGENT_PATH=/usr/bin/envclone-agent
FORCED_COMMAND="command=\"$AGENT_PATH --forced-command\""
RESTRICT=restrict
LEGACY_RESTRICT=no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding

die() {
    echo "install.sh: $*" >&2
    exit 1
}

binary="$(dirname "$0")/envclone-agent"
key_file=
authorized_keys=/root/.ssh/authorized_keys
restrict=$RESTRICT
root=

while [ $# -gt 0 ]; do
    case $1 in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
        --authorized-key) [ $# -ge 2 ] || die "--authorized-key needs a file"; key_file=$2; shift 2 ;;
        --authorized-keys-file) [ $# -ge 2 ] || die "--authorized-keys-file needs a path"; authorized_keys=$2; shift 2 ;;
        --without-restrict) restrict=$LEGACY_RESTRICT; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=${2%/}; shift 2 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//; s/^#$//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root: the agent is installed as root's and runs as root"
[ -f "$binary" ] || die "no agent binary at $binary (give --binary PATH)"
[ -z "$root" ] || [ -d "$root" ] || die "--root $root is not a directory"

# The binary: replaced by a rename, so a running agent is never overwritten
# in place (that fails with "text file busy") and nobody sees half a file.
target=$root$AGENT_PATH
if [ -f "$target" ] && cmp -s "$binary" "$target"; then
    echo "unchanged $target"
else
    mkdir -p "$(dirname "$target")"
    partial=$target.install.$$
    trap 'rm -f "$partial"' EXIT
    cp "$binary" "$partial"
    chown 0:0 "$partial"
    chmod 0755 "$partial"
    mv -f "$partial" "$target"
    trap - EXIT
    echo "installed $target"
fi
chown 0:0 "$target"
chmod 0755 "$target"
"$target" --version >/dev/null 2>&1 || [ -n "$root" ] || die "$target does not run here"

hooks=$root/etc/envclone/hooks.d
if [ -d "$hooks" ]; then
    echo "unchanged $hooks"
else
    mkdir -p "$hooks"
    echo "created $hooks"
fi
chmod 0755 "$root/etc/envclone" "$hooks"

[ -n "$key_file" ] || exit 0

# The key: the first line that is not blank or a comment, `type base64 [comment]`.
[ -r "$key_file" ] || die "cannot read $key_file"
key_line=$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$key_file" | head -n 1)
set -- $key_line
[ $# -ge 2 ] || die "$key_file does not hold a public key line (type base64 [comment])"
key_type=$1
key_blob=$2
case $key_type in
    ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) ;;
    *) die "$key_file: unsupported key type $key_type (options before the key are not accepted)" ;;
esac
case $key_blob in
    AAAA*) ;;
    *) die "$key_file: the key is not base64 (AAAA...)" ;;
esac
case $key_blob in
    *[!A-Za-z0-9+/=]*) die "$key_file: the key is not base64 (AAAA...)" ;;
esac

line="$FORCED_COMMAND,$restrict $key_type $key_blob envclone-controller"
keys=$root$authorized_keys
mkdir -p "$(dirname "$keys")"
chmod 0700 "$(dirname "$keys")"
touch "$keys"
chmod 0600 "$keys"

# The server uses the first line that matches a key: the same key without
# the forced command would make the pin worthless, so it is refused.
existing=$(grep -n -F -e " $key_blob" "$keys" || true)
if [ -n "$existing" ]; then
    unpinned=$(printf '%s\n' "$existing" | grep -v -F -e "$FORCED_COMMAND," || true)
    [ -z "$unpinned" ] || die "$keys already authorizes this key without the forced command (line ${unpinned%%:*}); remove that line first"
    echo "unchanged $keys (the key is already pinned to the agent)"
    exit 0
fi
# Append on a line of its own even when the file lacks a final newline.
if [ -n "$(tail -c 1 "$keys")" ]; then
    echo >> "$keys"
fi
printf '%s\n' "$line" >> "$keys"
echo "authorized $key_type key in $keys, pinned to $AGENT_PATH"
