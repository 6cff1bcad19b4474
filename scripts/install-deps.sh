#!/usr/bin/env bash
# Installs the Debian 12 packages envclone and its lab need, and nothing
# when they are all there already. Run as root.
set -euo pipefail

packages=(
    qemu-system-x86 qemu-utils            # QEMU and qemu-img
    libvirt-daemon-system libvirt-clients # libvirtd, virtlogd, virsh
    libvirt-dev libssh2-1-dev pkg-config  # to build the virt and ssh2 crates
    dnsmasq-base                          # libvirt networks
    busybox-static dropbear-bin           # the lab's guest userland and sshd
    linux-image-amd64                     # kernel + initrd the lab guests boot
    e2fsprogs iproute2 util-linux curl ca-certificates gcc libc6-dev
    virtinst                              # virt-clone: the reference `envclone lab bench` compares clones with
)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get, network namespaces)" >&2
    exit 2
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# qemu-img must match qemu-system: a newer qemu-utils from backports
# conflicts with bookworm's qemu-system-x86, so pin it to the same version.
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    wanted=()
    for package in "${missing[@]}"; do
        case $package in
            qemu-utils) ;;
            *) wanted+=("$package") ;;
        esac
    done
    apt-get install -y -qq --no-install-recommends --allow-downgrades \
        "${wanted[@]}" "qemu-utils=${qemu_version}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: no Rust toolchain: install one with rustup (https://rustup.rs), Rust 1.80 or newer" >&2
    exit 2
fi
echo "install-deps: all packages present" >&2
