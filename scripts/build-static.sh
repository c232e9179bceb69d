#!/usr/bin/env bash
# Builds binaries of the workspace linked statically against glibc
# (crt-static, with libseccomp's archive linked in) for x86_64 Linux:
#   scripts/build-static.sh PROFILE PIE|NOPIE CARGO_BUILD_ARGS…
# They land in target/x86_64-unknown-linux-gnu/PROFILE. PIE gives a
# static-pie (it relocates itself when it starts); NOPIE a fixed-address
# executable, whose data needs no relocation at all. Users:
#   - `make release`: berth-shim's binaries, berthd and the berth CLI,
#     NOPIE: one shim runs per container, and without shared libraries to
#     map and relocate each (and berthd) keeps fewer pages; the CLI, run
#     once per command, starts 0.26 ms sooner (docs/benchmarks.md);
#   - scripts/vm-assets.sh: the VM guest's agent and shim, PIE.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:?usage: build-static.sh PROFILE PIE|NOPIE CARGO_BUILD_ARGS…}
case ${2:-} in
    PIE) FLAGS="-C target-feature=+crt-static" ;;
    NOPIE) FLAGS="-C target-feature=+crt-static -C relocation-model=static" ;;
    *) echo "build-static.sh: the second argument is PIE or NOPIE" >&2; exit 2 ;;
esac
shift 2
MULTIARCH=$(gcc -print-multiarch)
RUSTFLAGS="$FLAGS" LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="/usr/lib/$MULTIARCH" \
    "${CARGO:-cargo}" build --locked --profile "$PROFILE" --target x86_64-unknown-linux-gnu "$@"
