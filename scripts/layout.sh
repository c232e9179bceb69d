#!/usr/bin/env bash
# Regenerates the function layout of one of berth's long-lived binaries:
#   scripts/layout.sh shim     crates/shim/layout.txt   (berth-shim)
#   scripts/layout.sh berthd   crates/daemon/layout.txt (berthd)
# The list names the functions the binary executes in a typical life, in
# address order. Optimised builds link them first (each crate's build.rs,
# lld's --symbol-ordering-file), so the code a process touches sits
# together instead of being spread over its text, where the kernel's 64 KiB
# fault-around maps all the cold code between (docs/design.md). A stale
# list costs memory, never correctness: lld skips names the binary no
# longer has.
#
# How the touched code is found: the binary runs from its own ext4 image on
# a loop device with readahead off, mounted afresh, so none of its pages is
# in the page cache and each comes in only when first touched (fault-around
# maps only pages already cached). The text pages present in the process
# afterwards are the touched ones; every function overlapping one is
# listed. Needs root and `make release` first. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release
case ${1:-} in
    shim) EXE=berth-shim OUT=crates/shim/layout.txt ;;
    berthd) EXE=berthd OUT=crates/daemon/layout.txt ;;
    *) echo "usage: layout.sh shim|berthd" >&2; exit 2 ;;
esac
WHAT=$1
[ -x "$BIN/berthd" ] && [ -x "$BIN/berth-shim" ] || { echo "layout.sh: run make release first" >&2; exit 1; }

WORK=$(mktemp -d /tmp/berth-layout.XXXXXX)
MNT=$WORK/mnt
PARENT=berth-layout-$$
DAEMON= LOOP=
export BERTH_SOCKET=$WORK/berth.sock
berth() { "$BIN/berth" "$@"; }
stop_daemon() {
    [ -n "$DAEMON" ] || return 0
    kill "$1" "$DAEMON" 2>/dev/null
    wait "$DAEMON" 2>/dev/null || true
    DAEMON=
}
cleanup() {
    if [ -n "$DAEMON" ]; then
        berth rm -f c1 c2 > /dev/null 2>&1 || true
        stop_daemon -TERM
    fi
    mountpoint -q "$MNT" && umount "$MNT"
    # berthd's bundle directory is a bind mount of itself, left by design.
    awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m"
    done
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$WORK"
    # A killed container's cgroup can stay busy for a moment after rm -f.
    for _ in $(seq 50); do
        local left=0
        for d in /sys/fs/cgroup/*/"$PARENT" /sys/fs/cgroup/"$PARENT"; do
            [ -d "$d" ] && { find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || left=1; }
        done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    true
}
trap cleanup EXIT

truncate -s 128M "$WORK/fs.img"
mkfs.ext4 -q "$WORK/fs.img"
LOOP=$(losetup --show -f "$WORK/fs.img")
echo 0 > "/sys/block/${LOOP#/dev/}/queue/read_ahead_kb"
mkdir "$MNT"
mount "$LOOP" "$MNT"
cp "$BIN/$EXE" "$MNT/$EXE"
# Unmounting evicts the copy's pages from the page cache.
umount "$MNT"
mount -o ro "$LOOP" "$MNT"
DAEMON_BIN=$BIN/berthd SHIM_BIN=$BIN/berth-shim
if [ "$WHAT" = shim ]; then SHIM_BIN=$MNT/berth-shim; else DAEMON_BIN=$MNT/berthd; fi

ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,etc,proc,dev,sys,tmp}
cp /bin/busybox "$ROOTFS/bin/"
for c in sh sleep echo; do ln -s busybox "$ROOTFS/bin/$c"; done
echo "root:x:0:0::/:/bin/sh" > "$ROOTFS/etc/passwd"
start_daemon() {
    BERTH_LOG=info "$DAEMON_BIN" --root "$WORK/root" --state "$WORK/state" --socket "$BERTH_SOCKET" \
        --cgroup-parent "$PARENT" --default-network none --shim "$SHIM_BIN" \
        --metrics-address "$WORK/metrics.sock" --metrics-per-container 2>> "$WORK/berthd.log" &
    DAEMON=$!
    for _ in $(seq 100); do berth ps > /dev/null 2>&1 && return 0; sleep 0.1; done
    echo "layout.sh: berthd did not start (see $WORK/berthd.log)" >&2; exit 1
}

# The text pages present in process $1's mapping of the copy, as page
# numbers of the file (bit 63 of each pagemap entry).
touched() {
    local start end off
    read -r start end off < <(awk -v f="$MNT/$EXE" '$2 ~ /^r-x/ && $6 == f { split($1, a, "-"); print a[1], a[2], $3 }' "/proc/$1/maps")
    [ -n "$start" ] || { echo "layout.sh: process $1 does not map $MNT/$EXE" >&2; exit 1; }
    dd if="/proc/$1/pagemap" bs=8 skip=$((16#$start / 4096)) count=$(((16#$end - 16#$start) / 4096)) status=none \
        | od -An -v -tx8 -w8 | awk -v base=$((16#$off / 4096)) '{ if ($1 ~ /^[89a-f]/) print base + NR - 1 }'
}

start_daemon
berth run --rm "$ROOTFS" echo attached > /dev/null
berth run -d --name c1 "$ROOTFS" sh -c 'echo up; sleep 1000' > /dev/null
berth run -d --name c2 "$ROOTFS" sleep 1000 > /dev/null
berth ps > /dev/null
berth ps --json > /dev/null
berth stats --no-stream --json > /dev/null
berth inspect c1 > /dev/null
berth logs c1 > /dev/null
berth exec c1 echo exec > /dev/null
berth top c1 > /dev/null
command -v curl > /dev/null && curl -s --unix-socket "$WORK/metrics.sock" http://x/metrics > /dev/null
if [ "$WHAT" = shim ]; then
    berth stop -t 1 c1 > /dev/null
    SHIM=$(berth inspect --json c1 | sed -n 's/^ *"shim_pid": *\([0-9]*\).*/\1/p')
    [ -n "$SHIM" ] || { echo "layout.sh: cannot find c1's shim" >&2; exit 1; }
    touched "$SHIM" > "$WORK/pages"
else
    touched "$DAEMON" > "$WORK/pages"
    # A recovery, then the rest of a container's life, in a second berthd.
    stop_daemon -KILL
    start_daemon
    berth ps --json > /dev/null
    berth stats --no-stream --json > /dev/null
    berth stop -t 1 c1 > /dev/null
    berth rm -f c1 c2 > /dev/null
    berth run --rm "$ROOTFS" echo again > /dev/null
    touched "$DAEMON" >> "$WORK/pages"
fi

# Every function overlapping a touched page, in address order: a
# function's file offset is its address less its segment's, plus the
# segment's offset (nm in decimal: mawk has no hex).
read -r SEG_OFF SEG_ADDR < <(readelf -lW "$BIN/$EXE" | awk '$1 == "LOAD" && $8 == "E" { print $2, $3; exit }')
nm -n -S -t d --defined-only "$BIN/$EXE" | awk '$3 ~ /^[tTwW]$/ && NF == 4' > "$WORK/functions"
sort -un "$WORK/pages" | awk -v delta=$((SEG_OFF - SEG_ADDR)) 'NR == FNR { touched[$1] = 1; next }
     { a = $1 + delta; n = $2 + 0; if (n == 0) n = 1
       for (p = int(a / 4096); p <= int((a + n - 1) / 4096); p++) if (p in touched) { print $4; break } }' \
    - "$WORK/functions" > "$WORK/layout"
{
    echo "# Functions a running $EXE executes, in address order: written by scripts/layout.sh $WHAT"
    cat "$WORK/layout"
} > "$OUT"
echo "layout.sh: $(sort -u "$WORK/pages" | wc -l) text pages touched; $(wc -l < "$WORK/layout") functions in $OUT"
