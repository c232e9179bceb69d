#!/usr/bin/env bash
# The berth tour: start berthd under a temporary root, run a few busybox
# containers (attached, detached, killed), show them, clean everything up.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DEMO=$(mktemp -d /tmp/berth-demo.XXXXXX)
export BERTH_SOCKET=$DEMO/berth.sock
DAEMON_PID=

cleanup() {
    set +e
    if [ -S "$BERTH_SOCKET" ]; then
        for id in $("$BIN/berth" ps -a --json | grep -o '"id":"[^"]*"' | cut -d'"' -f4); do
            "$BIN/berth" rm -f "$id" >/dev/null
        done
    fi
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    rmdir /sys/fs/cgroup/*/berth-demo/default /sys/fs/cgroup/*/berth-demo 2>/dev/null
    rmdir /sys/fs/cgroup/berth-demo/default /sys/fs/cgroup/berth-demo 2>/dev/null
    rm -rf "$DEMO"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
berth() { "$BIN/berth" "$@"; }

ROOTFS=$("$BIN/berth-rootfs" "$DEMO")
"$BIN/berthd" --root "$DEMO/root" --state "$DEMO/state" --socket "$BERTH_SOCKET" \
    --cgroup-parent /berth-demo >"$DEMO/berthd.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$BERTH_SOCKET" ] && break; sleep 0.05; done
echo "berthd running (pid $DAEMON_PID), root $DEMO, busybox rootfs $ROOTFS"

step berth run --rm ROOTFS sh -c 'echo hello from $(hostname); exit 3'
berth run --rm --name hello "$ROOTFS" sh -c 'echo hello from $(hostname); exit 3' || echo "(exit code $?)"

step berth run -d --name ticker ROOTFS sh -c 'while true; do date; sleep 1; done'
berth run -d --name ticker "$ROOTFS" sh -c 'while true; do date; sleep 1; done'
step berth run -d --name sleeper --runtime runc ROOTFS sleep 600
berth run -d --name sleeper --runtime runc "$ROOTFS" sleep 600
step berth run -d --name quick ROOTFS sh -c 'echo done; exit 7'
berth run -d --name quick "$ROOTFS" sh -c 'echo done; exit 7'
sleep 1.5

step berth ps -a
berth ps -a
step berth logs ticker
berth logs ticker
step berth kill -s KILL sleeper '&&' berth wait sleeper
berth kill -s KILL sleeper
berth wait sleeper || true
step berth inspect quick
berth inspect quick
step berth ps -a
berth ps -a
step berth rm -f ticker sleeper quick
berth rm -f ticker sleeper quick
step berth ps -a
berth ps -a
echo
echo "demo done; cleaning up $DEMO"
