#!/bin/sh
# Runs every check of the project: formatting, lints, the no_std build of the protocol crate, unit
# tests and the end-to-end tests (real mosquitto, real containers). Installs what the tests need
# first, on Debian / Raspberry Pi OS. Run as root: containers need it.
#
#   sudo sh tests/run.sh            # SKIFF_SKIP_INSTALL=1 skips the apt step
set -eu
cd "$(dirname "$0")/.."

if [ "${SKIFF_SKIP_INSTALL:-0}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # mosquitto: the broker the tests start on free loopback ports; mosquitto-clients: the
    # independent observer; busybox-static: the test image. Device builds (cross/): file,
    # qemu-user-static (runs the aarch64 build), gcc-aarch64-linux-gnu (C in crates such as ring).
    # openssl: the CA and certificates of the mutual-TLS tests.
    # docker-registry + skopeo: the registry the pull tests start and the tool that pushes to it.
    # nftables + iproute2: bridge networking (NAT and port mappings through nft; the tests make
    # their client namespaces with ip). g++: libFuzzer, built by the fuzz step (fuzz/run.sh).
    apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients busybox-static openssl \
        file qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross systemd \
        docker-registry skopeo nftables iproute2 g++ >/dev/null
    rustup target add aarch64-unknown-linux-musl >/dev/null
fi

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "skiff-proto builds no_std + alloc"
cargo check -p skiff-proto --no-default-features --locked
step "cargo test (unit, core, runtime, end-to-end)"
SKIFF_E2E_REQUIRED=1 cargo test --workspace --locked
step "fuzz targets (fuzz/run.sh): libFuzzer on stable, each decoder for ${SKIFF_FUZZ_SECONDS:-5} s"
sh fuzz/run.sh
step "static aarch64 build (cross/build.sh), checked under qemu-user against the host build"
SKIFF_NO_RUSTUP=1 sh cross/build.sh aarch64
sh cross/check.sh target/cross/skiff-aarch64 target/debug/skiff
step "systemd unit and tmpfiles (systemd-analyze verify, systemd-tmpfiles)"
sh systemd/check.sh target/debug/skiff
step "SD-card image install (systemd/install-rootfs.sh) into a skeleton root, first boot under qemu"
sh systemd/test-install.sh target/cross/skiff-aarch64 target/debug/skiff
