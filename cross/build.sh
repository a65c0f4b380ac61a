#!/bin/sh
# Static, stripped `skiff` binaries for devices, with only the Rust toolchain: the musl targets
# come from rustup and link with rust-lld (.cargo/config.toml); ring's C needs a C cross compiler.
#
#   sh cross/build.sh [aarch64|armv7|x86_64|all]...      default: aarch64
#
# Output: target/<triple>/dist/skiff ($CARGO_TARGET_DIR is honoured) (profile `dist` in
# Cargo.toml: opt-level "z", fat LTO, panic=abort, stripped; unwind tables dropped, see below)
# and a copy in target/cross/skiff-<arch>. Each binary is checked to be a static executable for
# its machine (`file`). Environment:
#   SKIFF_PROFILE   cargo profile (default dist; `release` builds faster, a bit larger)
#   SKIFF_NO_RUSTUP=1  don't run `rustup target add` (targets already installed)
#   CC_<triple>     C cross compiler for crates with C code (default: Debian's
#                   aarch64-linux-gnu-gcc / arm-linux-gnueabihf-gcc when installed)
set -eu
cd "$(dirname "$0")/.."

profile=${SKIFF_PROFILE:-dist}
[ $# -gt 0 ] || set -- aarch64
if [ "$*" = all ]; then
    set -- aarch64 armv7 x86_64
fi

triple_of() {
    case $1 in
        aarch64 | arm64) echo aarch64-unknown-linux-musl ;;
        armv7 | arm) echo armv7-unknown-linux-musleabihf ;;
        x86_64 | amd64) echo x86_64-unknown-linux-musl ;;
        *) echo "cross/build.sh: unknown arch '$1' (aarch64, armv7, x86_64 or all)" >&2; exit 2 ;;
    esac
}

# What `file` must report for each target.
machine_of() {
    case $1 in
        aarch64-*) echo 'ARM aarch64' ;;
        armv7-*) echo 'ARM, EABI5' ;;
        x86_64-*) echo 'x86-64' ;;
    esac
}

tdir=${CARGO_TARGET_DIR:-target}
mkdir -p "$tdir/cross"

# Size (issue 7), for the target's crates only (not build scripts):
# - the binary is built with panic = "abort", so nothing ever unwinds and its DWARF unwind
#   tables (.eh_frame + .eh_frame_hdr, ~15 % of the file) are dead weight: no-eh-frame.ld
#   discards them at link time (a panic still prints its message; RUST_BACKTRACE shows no
#   frames, which a stripped binary could not name anyway);
# - source paths in panic messages lose the builder's prefixes ($CARGO_HOME/registry/src/
#   index.crates.io-<hash>/, this checkout): `libcontainer-0.7.0/src/…`, `agent/src/…`.
# RUSTFLAGS and CARGO_ENCODED_RUSTFLAGS from the environment are kept.
root=$(pwd)
us=$(printf '\037')
flags="${CARGO_ENCODED_RUSTFLAGS:-}"
add() { flags="${flags:+$flags$us}$1"; }
for w in ${RUSTFLAGS:-}; do add "$w"; done
add "-Clink-arg=$root/cross/no-eh-frame.ld"
add "--remap-path-prefix=$root/="
for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
    if [ -d "$d" ]; then add "--remap-path-prefix=$d="; fi
done
for arch in "$@"; do
    triple=$(triple_of "$arch")
    if [ "${SKIFF_NO_RUSTUP:-0}" != 1 ]; then
        rustup target add "$triple" >/dev/null
    fi
    # Crates that compile C (ring, once TLS is in) need a C cross compiler: Debian's
    # gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf. Pure-Rust builds don't use it.
    var=$(echo "$triple" | tr - _)
    case $triple in
        aarch64-*) cc=aarch64-linux-gnu-gcc ;;
        armv7-*) cc=arm-linux-gnueabihf-gcc ;;
        *) cc=gcc ;;
    esac
    if eval "[ -z \"\${CC_$var:-}\" ]" && command -v "$cc" >/dev/null 2>&1; then
        export "CC_$var=$cc"
    fi
    # x86_64 is linked static non-PIE, as the aarch64 target is by default (static-pie adds
    # ~0.45 MiB of relocations and copies the relocated read-only data into every process).
    case $triple in
        x86_64-*) export CARGO_ENCODED_RUSTFLAGS="${flags:+$flags$us}-Crelocation-model=static" ;;
        *) export CARGO_ENCODED_RUSTFLAGS="$flags" ;;
    esac
    echo "== skiff for $triple (profile $profile)" >&2
    cargo build --locked --profile "$profile" --target "$triple" -p skiff-agent --bin skiff
    out=$tdir/$triple/$profile/skiff
    desc=$(file -b "$out")
    case $desc in
        *"$(machine_of "$triple")"*) ;;
        *) echo "cross/build.sh: $out is not a $(machine_of "$triple") binary: $desc" >&2; exit 1 ;;
    esac
    case $desc in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) echo "cross/build.sh: $out is not statically linked: $desc" >&2; exit 1 ;;
    esac
    case $desc in
        *"not stripped"*) echo "cross/build.sh: $out is not stripped: $desc" >&2; exit 1 ;;
    esac
    short=$(triple_of "$arch" | cut -d- -f1)
    cp "$out" "$tdir/cross/skiff-$short"
    printf '%s\t%s bytes\t%s\n' "$tdir/cross/skiff-$short" "$(wc -c < "$out")" "$desc"
done
