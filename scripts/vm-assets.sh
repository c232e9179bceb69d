#!/usr/bin/env bash
# Builds what a VM sandbox boots (docs/vm.md) into OUT (default
# target/vm-assets): the guest kernel as an ELF vmlinux (booted through its
# PVH entry), an initramfs holding berth-agent as /init, a static berth-shim
# and the kernel modules the agent loads, and assets.json with their
# digests. Installs what it needs: QEMU, cpio, kmod (Debian) and
# vhost-device-vsock (crates.io). Idempotent: reruns only rebuild the
# initramfs. Needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/vm-assets}
CARGO=${CARGO:-cargo}
VSOCK_VERSION=0.3.0
PACKAGES=(qemu-system-x86 cpio kmod xz-utils)
# In load order; modprobe adds each one's dependencies before it.
MODULES=(virtio_mmio vmw_vsock_virtio_transport 9pnet_virtio 9p overlay virtio_net virtio_blk virtio_console)

if ! dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}"
fi
if ! command -v vhost-device-vsock >/dev/null; then
    "$CARGO" install --locked --version "$VSOCK_VERSION" vhost-device-vsock
fi

mkdir -p "$OUT/cache"
OUT=$(realpath "$OUT")
CACHE=$OUT/cache

# The kernel: Debian's current generic one (it has 9p; -cloud has not),
# unpacked without installing it.
PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$PKG" ] || { echo "vm-assets: apt knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
if [ ! -d "$CACHE/$PKG" ]; then
    rm -rf "$CACHE/$PKG.tmp" && mkdir -p "$CACHE/$PKG.tmp"
    (cd "$CACHE/$PKG.tmp" && apt-get download -q "$PKG" 2>/dev/null && dpkg -x ./*.deb root && rm ./*.deb)
    mv "$CACHE/$PKG.tmp" "$CACHE/$PKG"
fi
KROOT=$CACHE/$PKG/root
KVER=$(ls "$KROOT/lib/modules")
if [ ! -s "$CACHE/$PKG/vmlinux" ]; then
    # The ELF inside the bzImage: the xz stream after its magic (the
    # kernel tree's extract-vmlinux does the same).
    OFFSET=$(grep -abo $'\xfd7zXZ\x00' "$KROOT/boot/vmlinuz-$KVER" | head -1 | cut -d: -f1 || true)
    [ -n "$OFFSET" ] || { echo "vm-assets: no xz stream in vmlinuz-$KVER" >&2; exit 1; }
    # (tail ends on SIGPIPE once xz has its stream.)
    { tail -c +$((OFFSET + 1)) "$KROOT/boot/vmlinuz-$KVER" || true; } | xz -dc --single-stream > "$CACHE/$PKG/vmlinux.tmp"
    [ "$(head -c 4 "$CACHE/$PKG/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] \
        || { echo "vm-assets: no ELF kernel inside vmlinuz-$KVER" >&2; exit 1; }
    depmod -b "$KROOT" "$KVER"
    mv "$CACHE/$PKG/vmlinux.tmp" "$CACHE/$PKG/vmlinux"
fi

# The guest's agent and shim: static (glibc, crt-static; libseccomp linked in).
CARGO=$CARGO bash scripts/build-static.sh guest PIE \
    -p berth-agent -p berth-shim --bin berth-agent --bin berth-shim
BIN=target/x86_64-unknown-linux-gnu/guest

STAGE=$CACHE/initramfs
rm -rf "$STAGE" && mkdir -p "$STAGE"/{bin,dev,proc,sys,etc/berth,lib/modules}
cp "$BIN/berth-agent" "$STAGE/init"
cp "$BIN/berth-shim" "$STAGE/bin/berth-shim"
: > "$STAGE/etc/berth/modules"
DEPS=()
for m in "${MODULES[@]}"; do
    # Fails (and so does the script) for a module this kernel lacks.
    SHOWN=$(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m")
    DEPS+=($(awk '$1 == "insmod" {print $2}' <<< "$SHOWN"))
done
for ko in $(printf '%s\n' "${DEPS[@]}" | awk '!seen[$0]++'); do
    cp "$ko" "$STAGE/lib/modules/"
    basename "$ko" >> "$STAGE/etc/berth/modules"
done
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible --quiet) > "$OUT/initramfs.tmp"
mv "$OUT/initramfs.tmp" "$OUT/initramfs"
cp "$CACHE/$PKG/vmlinux" "$OUT/vmlinux.tmp" && mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"

digest() { sha256sum "$1" | cut -d' ' -f1; }
cat > "$OUT/assets.json.tmp" <<JSON
{
  "kernel_release": "$KVER",
  "kernel_package": "$PKG",
  "vmlinux_sha256": "$(digest "$OUT/vmlinux")",
  "initramfs_sha256": "$(digest "$OUT/initramfs")",
  "agent_version": "$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)"
}
JSON
mv "$OUT/assets.json.tmp" "$OUT/assets.json"
echo "vm-assets: $OUT (kernel $KVER, initramfs $(du -h "$OUT/initramfs" | cut -f1))"
