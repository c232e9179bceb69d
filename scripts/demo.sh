#!/usr/bin/env bash
# The berth tour: start berthd under a temporary root, run a few busybox
# containers (attached, detached, killed, restarted by policy, one serving
# HTTP on a published port of the default network), crash and restart
# berthd under them, show them, clean everything up: containers, the default
# network's bridge (if the demo made it) and the portmap plugin's shared
# nat chains (if the demo made them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DEMO=$(mktemp -d /tmp/berth-demo.XXXXXX)
export BERTH_SOCKET=$DEMO/berth.sock
DAEMON_PID=
PORT=${DEMO_PORT:-8080}
# What was on the host before: the default network's bridge, the nat table.
BRIDGE_EXISTED=no
[ -e /sys/class/net/berth0 ] && BRIDGE_EXISTED=yes
NAT_BEFORE=$(iptables -w -t nat -S 2>/dev/null || true)

# The portmap plugin's shared chains (and the jumps to them), only if they
# were not there before the demo and no published port is left in them.
remove_hostport_chains() {
    local now chain rule made=()
    now=$(iptables -w -t nat -S 2>/dev/null) || return 0
    grep -qE '^-A (CNI-HOSTPORT-DNAT|CNI-DN-)' <<<"$now" && return 0
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
        grep -qx -- "-N $chain" <<<"$now" && ! grep -qx -- "-N $chain" <<<"$NAT_BEFORE" && made+=("$chain")
    done
    [ ${#made[@]} -eq 0 ] && return 0
    while IFS= read -r rule; do
        for chain in "${made[@]}"; do
            if [[ $rule =~ ^-A\ (PREROUTING|OUTPUT|POSTROUTING)\ .*-j\ $chain$ ]] && ! grep -qxF -- "$rule" <<<"$NAT_BEFORE"; then
                eval "iptables -w -t nat -D ${rule#-A }"
            fi
        done
    done <<<"$now"
    for chain in "${made[@]}"; do iptables -w -t nat -F "$chain"; done
    for chain in "${made[@]}"; do iptables -w -t nat -X "$chain"; done
}

cleanup() {
    set +e
    if [ -S "$BERTH_SOCKET" ]; then
        for id in $("$BIN/berth" ps -a --json | grep -o '"id":"[^"]*"' | cut -d'"' -f4); do
            "$BIN/berth" rm -f "$id" >/dev/null
        done
        # The default network's bridge goes with it (unless it was there before).
        [ "$BRIDGE_EXISTED" = no ] && "$BIN/berth" network rm berth >/dev/null 2>&1
    fi
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    # berthd's network namespaces are bind mounts under its state dir.
    for ns in "$DEMO"/state/netns/*; do [ -e "$ns" ] && umount -l "$ns"; done
    mountpoint -q "$DEMO/state/netns" && umount -l "$DEMO/state/netns"
    # And its bundle directory, a shared bind mount of itself (docs/vm.md).
    mountpoint -q "$DEMO/state/bundles" && umount -l "$DEMO/state/bundles"
    remove_hostport_chains
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
        --cri-socket "$DEMO/cri.sock" --cgroup-parent /berth-demo >>"$DEMO/berthd.log" 2>&1 &
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
step berth logs --tail 2 -t ticker "   # the last two lines, with the time each was written"
berth logs --tail 2 -t ticker
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

step berth run -d --name www -p $PORT:80 ROOTFS httpd -f -p 80 -h /etc "   # on the default network berth"
berth run -d --name www -p "$PORT:80" "$ROOTFS" httpd -f -p 80 -h /etc
step curl -s 127.0.0.1:$PORT/hostname "   # busybox httpd in the container answers"
for _ in $(seq 50); do curl -sf "127.0.0.1:$PORT/hostname" && break; sleep 0.1; done
step berth ps
berth ps
step berth inspect www
berth inspect www
step berth network ls
berth network ls

step "kill -9 berthd; sleep 1; start berthd again   # containers keep running"
kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true
sleep 1
start_daemon
step berth ps -a
berth ps -a
step berth events --since 0 --no-follow --type exit "   # every exit exactly once, across the crash"
berth events --since 0 --no-follow --type exit
step curl -s 127.0.0.1:$PORT/hostname "   # still served after the crash"
curl -sf "127.0.0.1:$PORT/hostname"
step berth rm -f ticker sleeper quick flaky www
berth rm -f ticker sleeper quick flaky www
step berth ps -a
berth ps -a
step berth doctor "   # nothing left that berthd's records do not account for"
berth doctor
if [ "$BRIDGE_EXISTED" = no ]; then
    step berth network rm berth "   # its bridge berth0 goes too"
    berth network rm berth
fi
echo
echo "demo done; cleaning up $DEMO"
