#!/usr/bin/env bash
# Runs a command (a test suite), then fails if the host gained anything
# berth's tests make and must remove, however they end: nat rules, network
# interfaces, mounts under /tmp and /run, cgroups named berth*, and
# processes of berth, shims and VMs. It compares against what was there
# before, so it can wrap a run on a host that is in use. The kernel drops a
# namespace's veth and a killed container's cgroup in the background, so
# the check waits up to 10 s for what is still going.
set -uo pipefail

snapshot() {
    iptables -w -t nat -S 2>/dev/null | sed 's/^/nat rule: /'
    ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print "interface: " $2 }'
    awk '$5 ~ /^\/(tmp|run)\// { print "mount: " $5 }' /proc/self/mountinfo
    find /sys/fs/cgroup -maxdepth 3 -type d -name 'berth*' 2>/dev/null | sed 's/^/cgroup: /'
    ps -eo pid=,comm= | awk '$2 ~ /^(berthd|berth-shim|berth|containerd.*|qemu-system.*|virtiofsd|vhost-device-vs.*)$/ { print "process: " $1 " " $2 }'
}

before=$(snapshot | sort)
"$@"
rc=$?
for _ in $(seq 100); do
    added=$(comm -13 <(echo "$before") <(snapshot | sort))
    [ -z "$added" ] && break
    sleep 0.1
done
if [ -n "$added" ]; then
    echo "host-leaks: left on the host by: $*" >&2
    echo "$added" | sed 's/^/  /' >&2
    [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
