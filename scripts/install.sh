#!/usr/bin/env bash
# Installs berth under a prefix: the binaries, shell completions and man
# pages (generated from the CLI's own definitions).
#   scripts/install.sh PREFIX [BIN_DIR]   (BIN_DIR: where cargo built them,
#                                          default target/release)
# `make release && make install [PREFIX=/usr/local] [DESTDIR=…]` runs it.
set -euo pipefail
PREFIX=${1:?usage: install.sh PREFIX [BIN_DIR]}
BIN=${2:-target/release}
BINARIES=(berth berthd berth-shim berth-logger containerd-shim-berth-v1)
for b in "${BINARIES[@]}"; do
	[ -x "$BIN/$b" ] || { echo "install.sh: $BIN/$b is missing: build first (make release)" >&2; exit 1; }
done
install -d "$PREFIX/bin"
for b in "${BINARIES[@]}"; do
	install -m 0755 "$BIN/$b" "$PREFIX/bin/$b"
done
# Completions where bash-completion, zsh and fish look for them.
install -d "$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" \
	"$PREFIX/share/fish/vendor_completions.d"
"$BIN/berth" completion bash > "$PREFIX/share/bash-completion/completions/berth"
"$BIN/berth" completion zsh > "$PREFIX/share/zsh/site-functions/_berth"
"$BIN/berth" completion fish > "$PREFIX/share/fish/vendor_completions.d/berth.fish"
# Man pages: berth(1) and one per subcommand, berthd(8).
"$BIN/berth" man --dir "$PREFIX/share/man/man1"
install -d "$PREFIX/share/man/man8"
"$BIN/berthd" --man-page > "$PREFIX/share/man/man8/berthd.8"
echo "berth installed under $PREFIX"
