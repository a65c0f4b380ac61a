#!/bin/sh
# Static, stripped `skiff` binaries for devices, with only the Rust toolchain: the musl targets
# come from rustup and link with rust-lld (.cargo/config.toml), skiff has no C dependencies.
#
#   sh cross/build.sh [aarch64|armv7|x86_64|all]...      default: aarch64
#
# Output: target/<triple>/dist/skiff ($CARGO_TARGET_DIR is honoured) (profile `dist` in Cargo.toml: opt-level "z", fat LTO,
# panic=abort, stripped) and a copy in target/cross/skiff-<arch>. Each binary is checked to be a
# static executable for its machine (`file`). Environment:
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
