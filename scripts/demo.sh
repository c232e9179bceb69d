#!/usr/bin/env bash
# The berth tour: start berthd under a temporary root, run a few busybox
# containers (attached, detached, killed, restarted by policy), crash and
# restart berthd under them, show them, clean everything up.
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
start_daemon() {
    rm -f "$BERTH_SOCKET"
    "$BIN/berthd" --root "$DEMO/root" --state "$DEMO/state" --socket "$BERTH_SOCKET" \
        --cgroup-parent /berth-demo >>"$DEMO/berthd.log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 100); do [ -S "$BERTH_SOCKET" ] && break; sleep 0.05; done
}
start_daemon
echo "berthd running (pid $DAEMON_PID), root $DEMO, busybox rootfs $ROOTFS"

step berth run --rm ROOTFS sh -c 'echo hello from $(hostname); exit 3'
berth run --rm --name hello "$ROOTFS" sh -c 'echo hello from $(hostname); exit 3' || echo "(exit code $?)"

step "berth run --rm ROOTFS sh -c '…escape attempts…'   # refused by the default confinement"
berth run --rm "$ROOTFS" sh -c 'mknod /dev/k c 1 11; echo x > /dev/k; echo -1 > /sys/fs/cgroup/pids/pids.max;
    unshare -U -r true; grep -E "CapEff|Seccomp:" /proc/self/status' || true

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

step berth run -d --name flaky --restart on-failure:3 ROOTFS sh -c 'echo attempt; exit 1'
berth run -d --name flaky --restart on-failure:3 "$ROOTFS" sh -c 'echo attempt; exit 1'
sleep 1.5
step berth inspect flaky "   # restarted 3 times, 100/200/400 ms apart"
berth inspect flaky

step "kill -9 berthd; sleep 1; start berthd again   # containers keep running"
kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true
sleep 1
start_daemon
step berth ps -a
berth ps -a
step berth events --since 0 --no-follow --type exit "   # every exit exactly once, across the crash"
berth events --since 0 --no-follow --type exit
step berth rm -f ticker sleeper quick flaky
berth rm -f ticker sleeper quick flaky
step berth ps -a
berth ps -a
echo
echo "demo done; cleaning up $DEMO"
