# berth — two entry points: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# System packages berth needs to build, run and be tested against peers.
APT_PACKAGES := busybox-static runc containerd protobuf-compiler libseccomp-dev pkg-config bsdutils gcc libc6-dev docker-registry containernetworking-plugins iptables

.PHONY: deps build release demo test lint unit e2e chaos bench clean criu install vm-assets

# Where `make install` puts binaries, completions and man pages.
PREFIX ?= /usr/local

deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo (Rust >= 1.95) is required: https://rustup.rs"; exit 1; }
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); \
	fi

build: deps
	$(CARGO) build --workspace --bins --locked

# The long-lived binaries are linked static and at a fixed address: no
# shared libraries to map or relocate, so each berth-shim (one per
# container) and berthd keep fewer private pages (docs/benchmarks.md). The
# CLI too: it starts once per command, 0.26 ms sooner so. The shim is built
# alone (its own dependency set), berthd and the CLI apart from the rest;
# all are linked into target/release beside the other binaries.
SHIM_BINS := berth-shim containerd-shim-berth-v1 berth-logger
STATIC_DIR := target/x86_64-unknown-linux-gnu/release
release: deps
	$(CARGO) build --workspace --exclude berth-shim --exclude berth-daemon --exclude berth-cli --bins --release --locked
	CARGO=$(CARGO) bash scripts/build-static.sh release NOPIE -p berth-shim --bins
	CARGO=$(CARGO) bash scripts/build-static.sh release NOPIE -p berth-daemon --bins
	CARGO=$(CARGO) bash scripts/build-static.sh release NOPIE -p berth-cli --bins
	for b in $(SHIM_BINS) berthd berth; do ln -f $(STATIC_DIR)/$$b target/release/$$b; done

demo: release
	bash scripts/demo.sh

# Installs what `make release` built (it installs no package and builds
# nothing itself, so `sudo make install` touches only PREFIX).
install:
	bash scripts/install.sh "$(DESTDIR)$(PREFIX)" target/release

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit: build
	$(CARGO) test --workspace --locked --exclude berth-e2e

# The chaos test prints its counts (containers, kills, unknown exits, events).
# The checkpoint tests need CRIU (`make criu`, a no-op once installed).
# scripts/host-leaks.sh fails the run if the tests left nat rules, interfaces,
# mounts, cgroups or processes on the host.
e2e: build criu vm-assets
	bash scripts/host-leaks.sh $(CARGO) test --locked -p berth-e2e -- --skip chaos
	bash scripts/host-leaks.sh $(CARGO) test --locked -p berth-e2e --test chaos -- --nocapture

test: lint unit e2e

# The long chaos run: 500 containers, 10 berthd kills (the short one is in e2e).
chaos: build
	BERTH_CHAOS=long $(CARGO) test --locked -p berth-e2e --test chaos -- --nocapture

# CRIU for checkpoint/restore: Debian trixie's criu in a private prefix (/opt/berth/criu,
# wrapper /opt/berth/criu/bin/criu); a no-op when already installed. Needs root.
# `make criu CRIU_ARGS=--check` also runs the smoke check (docs/operations.md, "CRIU").
criu:
	bash scripts/install-criu.sh $(CRIU_ARGS)

# What VM sandboxes boot (docs/vm.md): QEMU, vhost-device-vsock, Debian's
# kernel unpacked, and an initramfs with the static berth-agent and
# berth-shim, into VM_ASSETS with their digests.
VM_ASSETS ?= target/vm-assets
vm-assets: deps
	bash scripts/vm-assets.sh $(VM_ASSETS)

bench: release
	$(CARGO) run --release --locked -p berth-bench -- $(BENCH_ARGS)

clean:
	$(CARGO) clean
