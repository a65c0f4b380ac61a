#!/bin/sh
# Checks a cross-built skiff under qemu-user (Debian's qemu-user-static), against a host build:
#
#   sh cross/check.sh CROSS_BINARY HOST_BINARY
#
# - `--version` and `task validate` of every example run on the foreign CPU;
# - wire compatibility, both ways: the examples encoded as a desired-state message by each build
#   must be the same bytes; every golden fixture (proto/tests/fixtures/*.bin) and each build's
#   encoding, decoded to JSON by each build, must print the same JSON.
# qemu-user can't create containers (it rejects clone(CLONE_PARENT)); those are tested natively.
set -eu
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: $0 CROSS_BINARY HOST_BINARY" >&2; exit 2; }
cross=$1
host=$2

case $(file -b "$cross") in
    *aarch64*) qemu=qemu-aarch64-static ;;
    *ARM*) qemu=qemu-arm-static ;;
    *x86-64*) qemu= ;;
    *) echo "$0: $cross: unknown machine: $(file -b "$cross")" >&2; exit 1 ;;
esac
if [ -n "$qemu" ] && ! command -v "$qemu" >/dev/null; then
    echo "$0: $qemu not found (apt-get install qemu-user-static)" >&2
    exit 1
fi
run() { $qemu "$cross" "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

echo "-- $cross --version"
run --version | tee "$work/version"
want="skiff $("$host" --version | cut -d' ' -f2)"
[ "$(cat "$work/version")" = "$want" ] || { echo "$0: version differs from the host build's ($want)" >&2; exit 1; }

echo "-- task validate (examples)"
run task validate examples/*.json examples/demo/*.json

echo "-- wire: encode on both, compare bytes"
set -- examples/*.json examples/demo/*.json
run task encode --version 42 --cluster demo --node pi-1 "$@" > "$work/cross.bin"
"$host" task encode --version 42 --cluster demo --node pi-1 "$@" > "$work/host.bin"
[ -s "$work/host.bin" ] || { echo "$0: the host build encoded nothing" >&2; exit 1; }
cmp "$work/cross.bin" "$work/host.bin"
echo "   $(wc -c < "$work/host.bin") bytes, identical"

echo "-- wire: decode golden fixtures and the encodings on both, compare JSON"
n=0
for f in proto/tests/fixtures/*.bin "$work/cross.bin" "$work/host.bin"; do
    run task decode "$f" > "$work/cross.json"
    "$host" task decode "$f" > "$work/host.json"
    grep -q '"kind"' "$work/host.json" || { echo "$0: $f: no message decoded" >&2; exit 1; }
    if ! cmp -s "$work/cross.json" "$work/host.json"; then
        echo "$0: $f decodes differently:" >&2
        diff "$work/host.json" "$work/cross.json" >&2 || true
        exit 1
    fi
    n=$((n + 1))
done
[ "$n" -ge 7 ] || { echo "$0: only $n messages compared" >&2; exit 1; }
echo "   $n messages, identical JSON"

echo "-- a corrupted message is refused on both"
head -c 10 "$work/host.bin" > "$work/short.bin"
if run task decode "$work/short.bin" >/dev/null 2>&1; then
    echo "$0: a truncated message decoded" >&2
    exit 1
fi
echo "cross check ok: $cross"
