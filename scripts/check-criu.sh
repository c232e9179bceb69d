#!/usr/bin/env bash
# Smoke check of the CRIU berth uses (as root): `criu check` must say "Looks good.",
# then a real round trip: a counter loop in its own session is dumped (and so
# stopped), restored detached, and must go on counting from where it was.
# Usage: scripts/check-criu.sh   (BERTH_CRIU=PATH, default /opt/berth/criu/bin/criu)
# Run by `scripts/install-criu.sh --check` and `--check-only`.
set -euo pipefail

PROG=check-criu
CRIU=${BERTH_CRIU:-/opt/berth/criu/bin/criu}
die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -x "$CRIU" ] || die "$CRIU not found or not executable (run scripts/install-criu.sh)"
command -v iptables-restore >/dev/null || die "iptables-restore not found (apt-get install iptables): CRIU needs it for network locking"

version=$("$CRIU" --version 2>&1) || die "'$CRIU --version' failed: $(head -1 <<<"$version")"
say "$CRIU: $(tr '\n' ' ' <<<"$version" | sed 's/ *$//')"

check=$("$CRIU" check 2>&1) || die "'criu check' failed: $(tail -1 <<<"$check")"
grep -q '^Looks good\.' <<<"$check" || die "'criu check' did not say 'Looks good.': $(tail -1 <<<"$check")"
say "criu check: $(tr '\n' ' ' <<<"$check" | sed 's/ *$//')"

# The session id of a process (field 6 of /proc/PID/stat; no procps needed).
sid_of() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    set -- $s
    echo "$4"
}
session_alive() {   # any process left in session $1?
    local f
    for f in /proc/[0-9]*; do
        [ "$(sid_of "${f#/proc/}")" = "$1" ] && return 0
    done
    return 1
}

DIR=$(mktemp -d /tmp/berth-criu-check.XXXXXX)
LOOP_PID= RESTORED_PID= OK=no
cleanup() {
    local p
    for p in $RESTORED_PID $LOOP_PID; do
        # Only our loop: its session (and process group) is its own pid.
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sh ] && [ "$(sid_of "$p")" = "$p" ]; then
            kill -KILL -- "-$p" 2>/dev/null || true
        fi
    done
    if [ "$OK" = yes ]; then rm -rf -- "$DIR"; else echo "$PROG: images and logs kept in $DIR" >&2; fi
}
trap cleanup EXIT

count() {   # the counter file, retried while the loop rewrites it
    local c i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        c=$(cat "$DIR/count" 2>/dev/null || true)
        [[ $c =~ ^[0-9]+$ ]] && { echo "$c"; return; }
        sleep 0.02
    done
    die "no counter value in $DIR/count"
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# The loop: its own session (setsid -f: not our child), no terminal, cwd and files in
# DIR, and no descriptor but 0-2 (an inherited lock or socket would make dump refuse).
(
    for fd in /proc/self/fd/*; do
        n=${fd##*/}
        case $n in 0|1|2) ;; *) eval "exec $n>&-" 2>/dev/null || true ;; esac
    done
    exec setsid -f sh -c 'cd "$1" && echo $$ >pid && i=0 && while :; do i=$((i+1)); echo $i >count; sleep 0.1; done' loop "$DIR"
) </dev/null >/dev/null 2>&1 &
for _ in $(seq 50); do [ -s "$DIR/pid" ] && break; sleep 0.05; done
LOOP_PID=$(cat "$DIR/pid" 2>/dev/null) || die "the counter loop did not start"
for _ in $(seq 50); do [ "$(count)" -ge 5 ] && break; sleep 0.1; done

t=$(date +%s%N)
"$CRIU" dump -t "$LOOP_PID" -D "$DIR" -o dump.log -v4 \
    || die "criu dump failed (log: $DIR/dump.log): $(grep -m1 -i error "$DIR/dump.log" || tail -1 "$DIR/dump.log")"
dump_ms=$(ms_since "$t")
# Restore needs the pids again: wait until nothing of the dumped session is left (its
# sleep child is reaped by init, which may take a moment).
for _ in $(seq 100); do
    session_alive "$LOOP_PID" || break
    sleep 0.05
done
session_alive "$LOOP_PID" && die "the loop's session ($LOOP_PID) still has processes after criu dump"
at_dump=$(count)
sleep 0.3
[ "$(count)" = "$at_dump" ] || die "the counter moved while the loop was dumped"

t=$(date +%s%N)
"$CRIU" restore -D "$DIR" -d -o restore.log -v4 --pidfile "$DIR/restored.pid" \
    || die "criu restore failed (log: $DIR/restore.log): $(grep -m1 -i error "$DIR/restore.log" || tail -1 "$DIR/restore.log")"
restore_ms=$(ms_since "$t")
RESTORED_PID=$(cat "$DIR/restored.pid")
[ "$RESTORED_PID" = "$LOOP_PID" ] || die "restored pid $RESTORED_PID, expected $LOOP_PID"
sleep 1
after=$(count)
[ "$after" -gt "$at_dump" ] || die "the restored loop does not count: $after after restore, $at_dump at dump"
[ "$after" -le $((at_dump + 15)) ] || die "the counter jumped from $at_dump to $after: not a continuation"
OK=yes
say "round trip: counter $at_dump at dump, $after 1 s after restore (pid $RESTORED_PID kept); dump ${dump_ms} ms, restore ${restore_ms} ms"
say "OK"
