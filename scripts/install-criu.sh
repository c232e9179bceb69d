#!/usr/bin/env bash
# Install the CRIU that berth uses, into a private prefix, as root, on Debian.
#
# Why: Debian 12's criu (3.17) fails on recent kernels ("vdso: Unexpected rt
# vDSO area bounds"); Debian 13 (trixie)'s criu 4.1 works but needs trixie's
# glibc. So this script downloads trixie's criu, libcompel1 and every library
# they need that the host lacks or has in an older version (trixie's libc6
# included), unpacks them with `dpkg -x` into PREFIX/root, and writes
# PREFIX/bin/criu, a wrapper that starts criu through trixie's own loader with
# --library-path pointing into the prefix. Nothing is installed into /usr and
# the host's apt configuration, lists and packages are not touched (apart from
# installing the host's own `iptables`, which CRIU needs for network locking).
#
# The apt sources for trixie are derived at run time from the host's own
# sources (/etc/apt/sources.list, sources.list.d/*.list and *.sources): every
# entry for the host's Debian release (e.g. bookworm, bookworm-updates,
# bookworm-security) is repeated with the suite renamed (trixie,
# trixie-updates, trixie-security); backports/proposed-updates are skipped.
# apt runs with a private configuration, state and cache (APT_CONFIG) in a
# temporary directory, so the host's apt.conf.d hooks do not run either.
#
# Usage: scripts/install-criu.sh [--prefix DIR] [--update] [--force] [--check]
#        scripts/install-criu.sh [--prefix DIR] --check-only | --remove
#   (none)        install if PREFIX holds no intact install; otherwise do nothing
#   --update      also ask trixie for a newer package set; reinstall if it changed
#   --force       reinstall even if the installed set is intact and current
#   --check       after installing, run the smoke check (scripts/check-criu.sh)
#   --check-only  only run the smoke check against the installed wrapper
#   --remove      remove PREFIX (and criu's cache /run/criu.kdat)
# Environment: BERTH_CRIU_PREFIX (default /opt/berth/criu),
#   BERTH_CRIU_SUITE (default trixie), BERTH_CRIU_MIN_VERSION (default 4.1).
#
# PREFIX/manifest records the suite, each package with its version and the
# SHA-256 of its .deb (verified by apt against the suite's signed index), and
# a digest of the unpacked tree; a second run checks the tree against it.
set -euo pipefail

PROG=install-criu
die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*"; }

PREFIX=${BERTH_CRIU_PREFIX:-/opt/berth/criu}
SUITE=${BERTH_CRIU_SUITE:-trixie}
MIN_VERSION=${BERTH_CRIU_MIN_VERSION:-4.1}
# The packages asked for; apt resolves their Depends (recursively) against the suite.
ROOT_PACKAGES=(criu libcompel1)
UPDATE=no FORCE=no CHECK=no CHECK_ONLY=no REMOVE=no
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --update) UPDATE=yes ;;
        --force) FORCE=yes ;;
        --check) CHECK=yes ;;
        --check-only) CHECK_ONLY=yes ;;
        --remove) REMOVE=yes ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

case $PREFIX in
    /*) ;;
    *) die "--prefix must be an absolute path, not '$PREFIX'" ;;
esac
PREFIX=${PREFIX%/}
case $PREFIX in
    ''|/|/usr|/usr/*|/bin|/sbin|/lib|/lib64|/etc|/etc/*|/var|/opt) die "refusing prefix '$PREFIX' (it would clash with the host)" ;;
esac
WRAPPER=$PREFIX/bin/criu

run_check() {
    BERTH_CRIU=$WRAPPER bash "$SCRIPT_DIR/check-criu.sh" 9<&-   # not the install lock
}

[ "$(id -u)" -eq 0 ] || die "must run as root"

if [ "$REMOVE" = yes ]; then
    if [ -e "$PREFIX" ]; then
        [ -f "$PREFIX/manifest" ] || die "$PREFIX has no manifest: not removing a directory this script did not make"
        rm -rf -- "$PREFIX"
        rm -f /run/criu.kdat /run/criu.kdat.tmp   # criu's kernel-features cache
        say "removed $PREFIX"
    else
        say "nothing to remove at $PREFIX"
    fi
    exit 0
fi

if [ "$CHECK_ONLY" = yes ]; then
    [ -x "$WRAPPER" ] || die "no CRIU installed at $PREFIX (run scripts/install-criu.sh)"
    run_check
    exit 0
fi

for cmd in apt-get apt-cache apt-config dpkg dpkg-deb dpkg-query sha256sum flock awk find sort; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found (this script needs Debian's apt and dpkg)"
done
[ -r /etc/os-release ] || die "/etc/os-release missing: not a Debian system"
HOST_ID=$(. /etc/os-release && echo "${ID:-}")
HOST_CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ "$HOST_ID" = debian ] || die "host is '$HOST_ID', this script supports Debian only"
[ -n "$HOST_CODENAME" ] || die "VERSION_CODENAME missing from /etc/os-release"

ARCH=$(dpkg --print-architecture)
case $ARCH in
    amd64) TRIPLET=x86_64-linux-gnu LOADER=ld-linux-x86-64.so.2 ;;
    arm64) TRIPLET=aarch64-linux-gnu LOADER=ld-linux-aarch64.so.1 ;;
    *) die "architecture '$ARCH' is not supported (amd64, arm64)" ;;
esac

# The host's own iptables (iptables-restore), which CRIU runs for network locking.
if ! dpkg-query -W -f='${db:Status-Abbrev}' iptables 2>/dev/null | grep -q '^ii'; then
    say "installing the host's iptables (CRIU's network locking needs iptables-restore)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables >/dev/null 2>&1 || {
        apt-get update >/dev/null || die "apt-get update failed on the host"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables >/dev/null \
            || die "could not install iptables with the host's apt"
    }
fi

mkdir -p -- "$(dirname "$PREFIX")"
# One installer at a time (a lock on the parent directory: no lock file left behind).
exec 9<"$(dirname "$PREFIX")"
flock -w 600 9 || die "another install-criu holds the lock on $(dirname "$PREFIX")"
# What a killed run left behind (staging and replaced trees): ours, since we hold the lock.
rm -rf -- "$PREFIX".new.?????? "$PREFIX".old.*

# The digest of an unpacked tree: every path with its type, target or content hash.
tree_digest() {
    (cd "$1" && {
        find . -mindepth 1 -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
        find . -mindepth 1 ! -type f -printf '%y %p %l\n' | LC_ALL=C sort
    }) | sha256sum | cut -d' ' -f1
}
manifest_get() { awk -v k="$1" '$1==k {print $2; exit}' "$2"; }
manifest_pkgs() { awk '$1=="pkg" {print $2 "=" $3}' "$1" | LC_ALL=C sort; }

installed_ok() {
    local m=$PREFIX/manifest
    [ -f "$m" ] && [ -x "$WRAPPER" ] && [ -d "$PREFIX/root" ] || return 1
    [ "$(tree_digest "$PREFIX/root")" = "$(manifest_get tree_sha256 "$m")" ] || { say "$PREFIX/root differs from its manifest"; return 1; }
    "$WRAPPER" --version >/dev/null 2>&1 || { say "$WRAPPER --version fails"; return 1; }
}

INTACT=no
[ "$FORCE" = no ] && installed_ok && INTACT=yes
if [ "$INTACT" = yes ] && [ "$UPDATE" = no ]; then
    say "criu $(manifest_get criu_version "$PREFIX/manifest") already installed at $PREFIX (intact); nothing to do"
    [ "$CHECK" = yes ] && run_check
    exit 0
fi

START=$(date +%s.%N)
ETC_APT_BEFORE=$(find /etc/apt -type f -exec sha256sum {} + | LC_ALL=C sort)

WORK=$(mktemp -d /tmp/berth-criu.XXXXXX)
STAGE=
cleanup() {
    rm -rf -- "$WORK"
    [ -n "$STAGE" ] && rm -rf -- "$STAGE"
    return 0
}
trap cleanup EXIT
chmod 755 "$WORK"   # apt downloads as _apt

# --- apt sources for $SUITE, derived from the host's ---------------------------------
map_suite() {   # host suite -> target suite, or nothing to skip it
    case $SUITE:$1 in   # unstable has no -updates or -security suite
        sid:*-*|unstable:*-*|sid:*/*|unstable:*/*) return 0 ;;
    esac
    case $1 in
        "$HOST_CODENAME") echo "$SUITE" ;;
        "$HOST_CODENAME-updates") echo "$SUITE-updates" ;;
        "$HOST_CODENAME-security"|"$HOST_CODENAME/updates") echo "$SUITE-security" ;;
        *) ;;   # backports, proposed-updates, third-party suites
    esac
}
SOURCES=$WORK/sources.list.d/$SUITE.sources
mkdir -p "$WORK/sources.list.d"
: >"$SOURCES"

# deb822 stanzas of a .sources file, one per record, fields separated by \036
# and continuation lines kept (joined with \037) so Signed-By key blocks survive.
deb822_records() {
    awk 'function flush() { if (rec != "") print rec; rec = "" }
         /^#/ { next }
         /^[ \t]*$/ { flush(); next }
         /^[ \t]/ { rec = rec "\037" $0; next }
         { rec = (rec == "" ? $0 : rec "\036" $0) }
         END { flush() }' "$1"
}
emit_stanza() {   # uris suites(mapped) components extra-fields(\036-separated, may be empty)
    {
        echo "Types: deb"
        echo "URIs: $1"
        echo "Suites: $2"
        echo "Components: $3"
        [ -n "$4" ] && printf '%s\n' "$4" | tr '\036\037' '\n\n' | sed '/^$/d'
        echo
    } >>"$SOURCES"
}
from_sources_file() {
    local rec field key val types uris suites comps enabled extra s m mapped
    while IFS= read -r rec; do
        types= uris= suites= comps= enabled=yes extra=
        while IFS= read -r -d $'\036' field; do
            key=${field%%:*}; val=${field#*:}; val=${val#"${val%%[! ]*}"}
            case ${key,,} in
                types) types=$val ;;
                uris) uris=$val ;;
                suites) suites=$val ;;
                components) comps=$val ;;
                enabled) enabled=${val,,} ;;
                architectures|languages|targets) ;;
                *) extra=${extra:+$extra$'\036'}$field ;;
            esac
        done < <(printf '%s\036' "$rec")
        [ "$enabled" = no ] && continue
        [[ " $types " == *" deb "* ]] || continue
        mapped=
        for s in $suites; do
            m=$(map_suite "$s")
            [ -n "$m" ] && mapped="$mapped $m"
        done
        [ -n "$mapped" ] && [ -n "$uris" ] && [ -n "$comps" ] || continue
        emit_stanza "$uris" "${mapped# }" "$comps" "$extra"
    done < <(deb822_records "$1")
}
from_list_file() {
    local line type opts uri suite comps m o extra
    while IFS= read -r line; do
        line=${line%%#*}
        read -r type rest <<<"$line" || true
        [ "$type" = deb ] || continue
        opts=
        if [[ $rest == \[* ]]; then
            opts=${rest#[}; opts=${opts%%]*}; rest=${rest#*]}
        fi
        read -r uri suite comps <<<"$rest"
        m=$(map_suite "$suite")
        [ -n "$m" ] && [ -n "$comps" ] || continue
        extra=
        for o in $opts; do
            case ${o%%=*} in
                signed-by) extra=${extra:+$extra$'\036'}"Signed-By: ${o#*=}" ;;
                trusted) extra=${extra:+$extra$'\036'}"Trusted: ${o#*=}" ;;
                check-valid-until) extra=${extra:+$extra$'\036'}"Check-Valid-Until: ${o#*=}" ;;
            esac
        done
        emit_stanza "$uri" "$m" "$comps" "$extra"
    done <"$1"
}
HOST_SOURCE_FILES=()
[ -f /etc/apt/sources.list ] && HOST_SOURCE_FILES+=(/etc/apt/sources.list)
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && HOST_SOURCE_FILES+=("$f")
done
for f in "${HOST_SOURCE_FILES[@]}"; do
    case $f in
        *.sources) from_sources_file "$f" ;;
        *) from_list_file "$f" ;;
    esac
done
grep -q '^Suites: ' "$SOURCES" || die "no '$HOST_CODENAME' entry in the host's apt sources to derive '$SUITE' sources from"
say "$SUITE sources (from the host's): $(awk '/^URIs: / {u=substr($0, 7)} /^Suites: / {printf "%s%s [%s]", sep, u, substr($0, 9); sep="; "}' "$SOURCES")"

# --- private apt: configuration, state, cache ----------------------------------------
mkdir -p "$WORK/apt.conf.d" "$WORK/preferences.d" "$WORK/state/lists/partial" "$WORK/cache/archives/partial" "$WORK/log" "$WORK/debs"
: >"$WORK/status"; : >"$WORK/none"
{
    echo "// private apt configuration of $PROG: the host's apt.conf.d is not read"
    # Keep the host's transport settings (proxies, retries), not its index targets.
    apt-config dump Acquire | grep -v -E '^Acquire::(IndexTargets|cdrom)|^Acquire "";' || true
    cat <<EOF
Dir::Etc::Parts "$WORK/apt.conf.d";
Dir::Etc::Main "$WORK/none";
Dir::Etc::SourceList "$WORK/none";
Dir::Etc::SourceParts "$WORK/sources.list.d";
Dir::Etc::Preferences "$WORK/none";
Dir::Etc::PreferencesParts "$WORK/preferences.d";
Dir::State "$WORK/state";
Dir::State::Lists "$WORK/state/lists";
Dir::State::status "$WORK/status";
Dir::Cache "$WORK/cache";
Dir::Log "$WORK/log";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
Acquire::Languages "none";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
} >"$WORK/apt.conf"
chown _apt "$WORK/debs" 2>/dev/null || true
papt() { APT_CONFIG=$WORK/apt.conf "$@"; }

say "reading $SUITE package lists (private apt state, derived from the host's sources)"
papt apt-get -q update >"$WORK/update.log" 2>&1 || { tail -5 "$WORK/update.log" >&2; die "apt-get update for $SUITE failed (log above)"; }
grep -q '^W:\|^E:' "$WORK/update.log" && { grep '^[WE]:' "$WORK/update.log" >&2; die "apt-get update for $SUITE reported problems"; }

# --- the package set ------------------------------------------------------------------
# apt's resolver, against an empty dpkg status, gives the full Depends/Pre-Depends closure
# of ROOT_PACKAGES in the suite; keep what the host lacks or has only in an older version.
papt apt-get -s install "${ROOT_PACKAGES[@]}" >"$WORK/resolve.log" 2>&1 \
    || { tail -5 "$WORK/resolve.log" >&2; die "$SUITE cannot satisfy ${ROOT_PACKAGES[*]} (log above)"; }
mapfile -t CLOSURE < <(awk '$1=="Inst" {v=$3; sub(/^\(/, "", v); print $2 "=" v}' "$WORK/resolve.log")
[ ${#CLOSURE[@]} -gt 0 ] || die "could not resolve ${ROOT_PACKAGES[*]} in $SUITE"
for p in "${ROOT_PACKAGES[@]}" libc6; do
    printf '%s\n' "${CLOSURE[@]}" | grep -q "^$p=" || die "$p is not in the resolved $SUITE package set"
done
CRIU_VERSION=$(printf '%s\n' "${CLOSURE[@]}" | sed -n 's/^criu=//p')
dpkg --compare-versions "$CRIU_VERSION" ge "$MIN_VERSION" || die "$SUITE offers criu $CRIU_VERSION, older than $MIN_VERSION"

PACKAGES=()
for pv in "${CLOSURE[@]}"; do
    p=${pv%%=*} v=${pv#*=}
    host=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$p" 2>/dev/null || true)
    keep=yes
    case " ${ROOT_PACKAGES[*]} libc6 " in *" $p "*) ;; *)
        if [[ $host == ii* ]] && dpkg --compare-versions "${host##* }" ge "$v"; then keep=no; fi ;;
    esac
    if [ "$keep" = yes ]; then PACKAGES+=("$pv"); else say "using the host's $p ${host##* } (>= $v)"; fi
done
mapfile -t PACKAGES < <(printf '%s\n' "${PACKAGES[@]}" | LC_ALL=C sort)

if [ "$INTACT" = yes ] && [ "$(manifest_pkgs "$PREFIX/manifest")" = "$(printf '%s\n' "${PACKAGES[@]}")" ]; then
    say "criu $CRIU_VERSION already installed at $PREFIX with the current $SUITE package set; nothing to do"
    [ "$CHECK" = yes ] && run_check
    exit 0
fi

# --- download, unpack, assemble in a staging directory, then swap ---------------------
say "downloading ${#PACKAGES[@]} packages from $SUITE: ${PACKAGES[*]}"
(cd "$WORK/debs" && papt apt-get -q download "${PACKAGES[@]}") >"$WORK/download.log" 2>&1 \
    || { tail -5 "$WORK/download.log" >&2; die "apt-get download from $SUITE failed (log above)"; }

STAGE=$(mktemp -d "$PREFIX.new.XXXXXX")
mkdir -p "$STAGE/root" "$STAGE/bin"
PKG_LINES=()
for pv in "${PACKAGES[@]}"; do
    p=${pv%%=*} v=${pv#*=}
    deb=$(find "$WORK/debs" -maxdepth 1 -name "${p}_*.deb" -print -quit)
    [ -n "$deb" ] || die "apt-get download left no .deb for $p"
    [ "$(dpkg-deb -f "$deb" Package)" = "$p" ] && [ "$(dpkg-deb -f "$deb" Version)" = "$v" ] \
        || die "$(basename "$deb") is not $p $v"
    dpkg -x "$deb" "$STAGE/root" || die "dpkg -x $(basename "$deb") failed"
    PKG_LINES+=("pkg $p $v $(sha256sum "$deb" | cut -d' ' -f1) $(basename "$deb")")
done
# Absolute symlinks would point into the host's /usr: make them relative inside the
# prefix, or drop them when their target is not in the prefix.
while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    case $target in
        /*) [ -e "$STAGE/root$target" ] || [ -L "$STAGE/root$target" ] || { rm -f "$link"; continue; }
            ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$STAGE/root$target")" "$link" ;;
    esac
done < <(find "$STAGE/root" -type l -print0)

LIBPATH="usr/lib/$TRIPLET:lib/$TRIPLET"
for f in "usr/lib/$TRIPLET/$LOADER" usr/sbin/criu; do
    [ -e "$STAGE/root/$f" ] || die "unpacked tree lacks $f"
done
# Try the unpacked criu in place before anything is swapped in.
out=$("$STAGE/root/usr/lib/$TRIPLET/$LOADER" --library-path "$STAGE/root/usr/lib/$TRIPLET:$STAGE/root/lib/$TRIPLET" \
    "$STAGE/root/usr/sbin/criu" --version 2>&1) || die "the unpacked criu does not start: $(head -1 <<<"$out")"
grep -q '^Version: ' <<<"$out" || die "unexpected 'criu --version' output: $(head -1 <<<"$out")"

R=$PREFIX/root
cat >"$STAGE/bin/criu" <<EOF
#!/bin/sh
# berth's CRIU: Debian $SUITE's criu $CRIU_VERSION, run through $SUITE's own loader from
# $PREFIX (written by scripts/install-criu.sh; see docs/operations.md, "CRIU").
exec $R/usr/lib/$TRIPLET/$LOADER --argv0 "\$0" --library-path $R/usr/lib/$TRIPLET:$R/lib/$TRIPLET $R/usr/sbin/criu "\$@"
EOF
chmod 755 "$STAGE/bin/criu"
{
    echo "# berth CRIU prefix, written by scripts/install-criu.sh; do not edit"
    echo "suite $SUITE"
    echo "criu_version $CRIU_VERSION"
    echo "host $HOST_ID $HOST_CODENAME $ARCH"
    echo "installed $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "tree_sha256 $(tree_digest "$STAGE/root")"
    printf '%s\n' "${PKG_LINES[@]}"
} >"$STAGE/manifest"
chmod 755 "$STAGE"

OLD=
if [ -e "$PREFIX" ]; then
    [ -f "$PREFIX/manifest" ] || [ -z "$(ls -A "$PREFIX")" ] || die "$PREFIX exists and was not made by this script (no manifest)"
    OLD=$PREFIX.old.$$
    mv -- "$PREFIX" "$OLD"
fi
mv -- "$STAGE" "$PREFIX"; STAGE=
[ -n "$OLD" ] && rm -rf -- "$OLD"

"$WRAPPER" --version >/dev/null 2>&1 || die "$WRAPPER --version fails after install"
[ "$ETC_APT_BEFORE" = "$(find /etc/apt -type f -exec sha256sum {} + | LC_ALL=C sort)" ] || die "/etc/apt changed during the install (a bug in $PROG)"

ELAPSED=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
say "installed criu $CRIU_VERSION ($SUITE, ${#PACKAGES[@]} packages, $(du -sh "$PREFIX" | cut -f1)) at $PREFIX in ${ELAPSED}s; wrapper: $WRAPPER"
[ "$CHECK" = yes ] && run_check
exit 0
