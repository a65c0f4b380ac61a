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
#   SKIFF_SYMBOLS=1    keep the symbol table (for cross/symbol-order.sh; same code and layout)
#   CC_<triple>     C cross compiler for crates with C code (default: Debian's
#                   aarch64-linux-gnu-gcc / arm-linux-musleabihf-gcc when installed)
#
# armv7 has no rust-std from rustup here (rust-std-…-armv7-unknown-linux-musleabihf answers 404),
# so its std is built from the rust-src component (cargo -Zbuild-std, allowed on the stable
# compiler with RUSTC_BOOTSTRAP=1 for that one cargo run) and linked, by rust-lld as for the
# other targets, against Debian's musl for armhf. Needs, once:
#   dpkg --add-architecture armhf && apt-get update &&
#   apt-get install musl-dev:armhf gcc-arm-linux-gnueabihf && rustup component add rust-src
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

# armv7: the C runtime a rust-std musl target would ship in its self-contained/ directory, made
# of Debian's files in directory $1: musl's crt1.o, crti.o, crtn.o and libc.a (musl-dev:armhf),
# gcc's crtbeginT.o / crtend.o and its ARM EHABI unwinder libgcc_eh.a as the libunwind.a std's
# `unwind` crate links (gcc-arm-linux-gnueabihf; with panic = "abort" only backtraces use it).
# rustc looks for the crt objects in the -L directories too, so linking is otherwise unchanged.
armv7_musl_libs() {
    musl=/usr/lib/arm-linux-musleabihf
    gcc=arm-linux-gnueabihf-gcc
    if [ ! -f $musl/libc.a ] || ! command -v $gcc >/dev/null 2>&1; then
        echo "cross/build.sh: armv7 needs Debian's musl for armhf and the ARM C compiler:" >&2
        echo "  dpkg --add-architecture armhf && apt-get update && apt-get install musl-dev:armhf gcc-arm-linux-gnueabihf" >&2
        exit 1
    fi
    src=$(rustc --print sysroot)/lib/rustlib/src/rust/library
    if [ ! -d "$src" ]; then
        if [ "${SKIFF_NO_RUSTUP:-0}" != 1 ]; then rustup component add rust-src >/dev/null; fi
        [ -d "$src" ] || { echo "cross/build.sh: armv7 needs the rust-src component (rustup component add rust-src)" >&2; exit 1; }
    fi
    mkdir -p "$1"
    for f in crt1.o crti.o crtn.o libc.a; do ln -sf "$musl/$f" "$1/$f"; done
    ln -sf "$($gcc -print-file-name=crtbeginT.o)" "$1/crtbegin.o"
    ln -sf "$($gcc -print-file-name=crtend.o)" "$1/crtend.o"
    ln -sf "$($gcc -print-file-name=libgcc_eh.a)" "$1/libunwind.a"
    for f in "$1"/*; do
        [ -e "$f" ] || { echo "cross/build.sh: $f: missing $(readlink "$f")" >&2; exit 1; }
    done
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
# RSS (issue 7): the functions an idle agent and launcher keep running are laid out together
# (cross/symbol-order.txt, made by cross/symbol-order.sh), so the kernel's 64 KiB fault-around
# maps little besides them. Names the build lacks (a stale list) are skipped without a warning.
# The list is used under a name with its checksum, so a new list relinks (cargo does not
# track the contents of a linker argument's file).
if [ -f cross/symbol-order.txt ]; then
    sum=$(cksum < cross/symbol-order.txt | cut -d' ' -f1)
    cp cross/symbol-order.txt "$tdir/cross/symbol-order-$sum.txt"
    add "-Clink-arg=--symbol-ordering-file=$(cd "$tdir/cross" && pwd)/symbol-order-$sum.txt"
    add "-Clink-arg=--no-warn-symbol-ordering"
fi
# The linker strips the symbols (not cargo's profile `strip`, whose setting changes every
# crate's symbol hashes): SKIFF_SYMBOLS=1 keeps them for cross/symbol-order.sh, and those
# builds have the same code, layout and symbol names as the stripped ones.
export "CARGO_PROFILE_$(echo "$profile" | tr a-z- A-Z_)_STRIP=none"
if [ "${SKIFF_SYMBOLS:-0}" != 1 ]; then add "-Clink-arg=--strip-all"; fi
add "--remap-path-prefix=$root/="
for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
    if [ -d "$d" ]; then add "--remap-path-prefix=$d="; fi
done
for arch in "$@"; do
    triple=$(triple_of "$arch")
    build_std=
    case $triple in
        armv7-*)
            armv7_musl_libs "$tdir/armv7-musl-libs"
            build_std=-Zbuild-std=std,panic_abort
            ;;
        *) if [ "${SKIFF_NO_RUSTUP:-0}" != 1 ]; then rustup target add "$triple" >/dev/null; fi ;;
    esac
    # Crates that compile C (ring, once TLS is in) need a C cross compiler: Debian's
    # gcc-aarch64-linux-gnu / musl-dev:armhf's arm-linux-musleabihf-gcc (gcc-arm-linux-gnueabihf
    # with musl's headers; gcc's ar). Pure-Rust builds don't use it.
    var=$(echo "$triple" | tr - _)
    case $triple in
        aarch64-*) cc=aarch64-linux-gnu-gcc ;;
        armv7-*) cc=arm-linux-musleabihf-gcc; export "AR_$var=arm-linux-gnueabihf-ar" ;;
        *) cc=gcc ;;
    esac
    if eval "[ -z \"\${CC_$var:-}\" ]" && command -v "$cc" >/dev/null 2>&1; then
        export "CC_$var=$cc"
    fi
    # x86_64 is linked static non-PIE, as the aarch64 target is by default (static-pie adds
    # ~0.45 MiB of relocations and copies the relocated read-only data into every process).
    case $triple in
        x86_64-*) export CARGO_ENCODED_RUSTFLAGS="${flags:+$flags$us}-Crelocation-model=static" ;;
        armv7-*) export CARGO_ENCODED_RUSTFLAGS="${flags:+$flags$us}-Lnative=$(cd "$tdir/armv7-musl-libs" && pwd)" ;;
        *) export CARGO_ENCODED_RUSTFLAGS="$flags" ;;
    esac
    echo "== skiff for $triple (profile $profile)" >&2
    if [ -n "$build_std" ]; then
        RUSTC_BOOTSTRAP=1 cargo build --locked "$build_std" --profile "$profile" --target "$triple" -p skiff-agent --bin skiff
    else
        cargo build --locked --profile "$profile" --target "$triple" -p skiff-agent --bin skiff
    fi
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
        *"not stripped"*) if [ "${SKIFF_SYMBOLS:-0}" != 1 ]; then
            echo "cross/build.sh: $out is not stripped: $desc" >&2; exit 1
        fi ;;
    esac
    short=$(triple_of "$arch" | cut -d- -f1)
    cp "$out" "$tdir/cross/skiff-$short"
    printf '%s\t%s bytes\t%s\n' "$tdir/cross/skiff-$short" "$(wc -c < "$out")" "$desc"
done
