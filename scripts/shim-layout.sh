#!/usr/bin/env bash
# Regenerates crates/shim/layout.txt: the functions a running berth-shim
# executes (start, create, start, stats, exec, top, a stop and its exit),
# in address order. Optimised builds link them first (crates/shim/build.rs,
# lld's --symbol-ordering-file), so the code a shim touches sits together
# instead of being spread over its text, where the kernel's 64 KiB
# fault-around maps all the cold code between (docs/benchmarks.md). A
# stale list costs memory, never correctness: lld skips names the binary
# no longer has.
#
# How the touched code is found: the shim runs from its own ext4 image on a
# loop device with readahead off, mounted afresh, so its pages are not in
# the page cache and each one comes in only when the shim (or a helper it
# forks) first touches it; fault-around maps only pages already cached.
# The pages present in the shim's text when it is done are the touched
# ones; every function overlapping one is listed. Run it again on a build
# that used the list to tighten it.
# Needs root and `make release` first. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release
OUT=crates/shim/layout.txt
[ -x "$BIN/berthd" ] && [ -x "$BIN/berth-shim" ] || { echo "shim-layout.sh: run make release first" >&2; exit 1; }
[ "$(od -An -j16 -N2 -tu2 "$BIN/berth-shim" | tr -d ' ')" = 2 ] \
    || { echo "shim-layout.sh: $BIN/berth-shim is not a fixed-address executable (make release builds one)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/berth-layout.XXXXXX)
MNT=$WORK/mnt
PARENT=berth-layout-$$
DAEMON= LOOP=
cleanup() {
    if [ -n "$DAEMON" ]; then
        "$BIN/berth" rm -f c1 > /dev/null 2>&1 || true
        kill "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null || true
    fi
    mountpoint -q "$MNT" && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$WORK"
    for d in /sys/fs/cgroup/*/"$PARENT" /sys/fs/cgroup/"$PARENT"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    true
}
trap cleanup EXIT

truncate -s 64M "$WORK/fs.img"
mkfs.ext4 -q "$WORK/fs.img"
LOOP=$(losetup --show -f "$WORK/fs.img")
echo 0 > "/sys/block/${LOOP#/dev/}/queue/read_ahead_kb"
mkdir "$MNT"
mount "$LOOP" "$MNT"
cp "$BIN/berth-shim" "$MNT/berth-shim"
# Unmounting evicts the copy's pages from the page cache.
umount "$MNT"
mount -o ro "$LOOP" "$MNT"

ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,dev,sys,tmp}
cp /bin/busybox "$ROOTFS/bin/"
for c in sh sleep echo; do ln -s busybox "$ROOTFS/bin/$c"; done
echo "root:x:0:0::/:/bin/sh" > "$ROOTFS/etc/passwd"
export BERTH_SOCKET=$WORK/berth.sock
BERTH_LOG=warn "$BIN/berthd" --root "$WORK/root" --state "$WORK/state" --socket "$BERTH_SOCKET" \
    --cgroup-parent "$PARENT" --default-network none --shim "$MNT/berth-shim" 2> "$WORK/berthd.log" &
DAEMON=$!
for _ in $(seq 100); do [ -S "$BERTH_SOCKET" ] && break; sleep 0.1; done

berth() { "$BIN/berth" "$@"; }
berth run -d --name c1 "$ROOTFS" sh -c 'echo up; sleep 1000' > /dev/null
berth stats --no-stream --json > /dev/null
berth exec c1 echo exec > /dev/null
berth top c1 > /dev/null
berth stop -t 1 c1 > /dev/null
SHIM=$(berth inspect --json c1 | sed -n 's/^ *"shim_pid": *\([0-9]*\).*/\1/p')
[ -n "$SHIM" ] && [ -r "/proc/$SHIM/pagemap" ] \
    || { echo "shim-layout.sh: cannot find c1's shim (berth inspect c1)" >&2; exit 1; }

# The text mapping's pages present in the shim (bit 63 of each pagemap
# entry), as page numbers.
read -r START END < <(awk -v f="$MNT/berth-shim" '$2 ~ /^r-x/ && $6 == f { split($1, a, "-"); print a[1], a[2] }' "/proc/$SHIM/maps")
[ -n "$START" ] || { echo "shim-layout.sh: the shim does not map $MNT/berth-shim" >&2; exit 1; }
FIRST=$((16#$START / 4096)) PAGES=$(((16#$END - 16#$START) / 4096))
dd if="/proc/$SHIM/pagemap" bs=8 skip="$FIRST" count="$PAGES" status=none | od -An -v -tx8 -w8 \
    | awk -v first="$FIRST" '{ if ($1 ~ /^[89a-f]/) print first + NR - 1 }' > "$WORK/pages"

# Every function that overlaps a touched page, in address order (nm in
# decimal: mawk has no hex).
nm -n -S -t d --defined-only "$BIN/berth-shim" | awk '$3 ~ /^[tTwW]$/ && NF == 4' > "$WORK/functions"
awk 'NR == FNR { touched[$1] = 1; next }
     { a = $1 + 0; n = $2 + 0; if (n == 0) n = 1
       for (p = int(a / 4096); p <= int((a + n - 1) / 4096); p++) if (p in touched) { print $4; break } }' \
    "$WORK/pages" "$WORK/functions" > "$WORK/layout"
{
    echo "# Functions a running berth-shim executes, in address order: written by scripts/shim-layout.sh"
    cat "$WORK/layout"
} > "$OUT"
echo "shim-layout.sh: $(wc -l < "$WORK/pages") of $PAGES text pages touched; $(wc -l < "$WORK/layout") functions in $OUT"
