#!/bin/sh
# Tests systemd/install-rootfs.sh on a prepared skeleton root (the directories a Debian /
# Raspberry Pi OS root has), then plays the device's first boot under qemu-user:
#
#   sh systemd/test-install.sh AARCH64_SKIFF HOST_SKIFF
#
# Checks every installed file, mode and symlink, the preloaded arm64 image in the store, that an
# amd64 image is refused for an arm64 device, the first-boot node key (0600, same key on the
# second boot, public key printed) and that an image holding a node key is refused.
# The arm64 "busybox" image wraps AARCH64_SKIFF as its binary: any aarch64 executable will do,
# the store checks the image's platform, and nothing runs it here.
set -eu
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 AARCH64_SKIFF HOST_SKIFF" >&2; exit 2; }
cross=$(realpath "$1")
host=$(realpath "$2")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
fail() { echo "test-install.sh: FAIL: $*" >&2; exit 1; }
mode_is() { # PATH MODE
    [ -e "$1" ] || [ -L "$1" ] || fail "$1 is missing"
    [ "$(stat -c %a "$1")" = "$2" ] || fail "$1 has mode $(stat -c %a "$1"), want $2"
}

root=$work/root
for d in etc/systemd/system usr/local/bin usr/lib var/lib run; do mkdir -p "$root/$d"; done

echo "-- images: arm64 (the device's) and amd64 (wrong for it)"
BUSYBOX=$cross sh tests/fixtures/make-busybox-oci.sh "$work/bb-arm64" arm64 >/dev/null
tar -C "$work/bb-arm64" -cf "$work/bb-arm64.tar" .
sh tests/fixtures/make-busybox-oci.sh "$work/bb-amd64" amd64 >/dev/null

echo "-- install-rootfs.sh into the skeleton"
sh systemd/install-rootfs.sh "$root" --arch arm64 --binary "$cross" --host-skiff "$host" \
    --image "$work/bb-arm64.tar=busybox" --tasks examples/demo

mode_is "$root/usr/local/bin/skiff" 755
cmp -s "$root/usr/local/bin/skiff" "$cross" || fail "installed binary differs"
mode_is "$root/etc/systemd/system/skiff.service" 644
cmp -s "$root/etc/systemd/system/skiff.service" systemd/skiff.service || fail "unit differs"
mode_is "$root/usr/lib/tmpfiles.d/skiff.conf" 644
cmp -s "$root/usr/lib/tmpfiles.d/skiff.conf" systemd/skiff.tmpfiles || fail "tmpfiles differs"
mode_is "$root/etc/skiff/agent.toml" 644
cmp -s "$root/etc/skiff/agent.toml" systemd/agent.toml || fail "config differs"
for f in examples/demo/*.json; do
    mode_is "$root/etc/skiff/tasks/$(basename "$f")" 644
done
link=$root/etc/systemd/system/multi-user.target.wants/skiff.service
[ -L "$link" ] || fail "$link is not a symlink"
[ "$(readlink "$link")" = /etc/systemd/system/skiff.service ] || fail "$link -> $(readlink "$link")"
mode_is "$root/var/lib/skiff" 700
[ ! -e "$root/var/lib/skiff/node.key" ] || fail "the image carries a node key"
echo "   files, modes and the enable symlink ok"

"$host" image --config /dev/null --data-dir "$root/var/lib/skiff" ls --json > "$work/images.json"
cat "$work/images.json"
grep -q '"reference":"docker.io/library/busybox:latest"' "$work/images.json" || fail "busybox not preloaded"
grep -q '"platform":"linux/arm64/v8"' "$work/images.json" || fail "preloaded image is not arm64"
echo "   preloaded image ok"

if sh systemd/install-rootfs.sh "$root" --arch arm64 --binary "$cross" --host-skiff "$host" \
    --image "$work/bb-amd64" > "$work/wrong.log" 2>&1; then
    cat "$work/wrong.log"
    fail "an amd64 image was accepted for an arm64 device"
fi
grep -q 'amd64' "$work/wrong.log" || { cat "$work/wrong.log"; fail "the refusal does not name the platform"; }
echo "   amd64 image refused for arm64"

echo "-- tmpfiles on the image root"
systemd-tmpfiles --create --root="$root" skiff.conf
mode_is "$root/run/skiff" 700

echo "-- first boot (ExecStartPre: skiff node init), under qemu-aarch64-static"
boot() {
    qemu-aarch64-static "$root/usr/local/bin/skiff" node init \
        --config "$root/etc/skiff/agent.toml" --data-dir "$root/var/lib/skiff"
}
first=$(boot)
echo "   $first"
echo "$first" | grep -Eq '^node [A-Za-z0-9_.-]+ key x25519:[0-9a-f]{64} \(new\)$' || fail "first boot printed: $first"
mode_is "$root/var/lib/skiff/node.key" 600
[ "$(wc -c < "$root/var/lib/skiff/node.key")" -eq 32 ] || fail "node.key is not 32 bytes"
mode_is "$root/var/lib/skiff/node.pub" 644
key=$(echo "$first" | sed 's/.*x25519:\([0-9a-f]*\).*/\1/')
[ "$(cat "$root/var/lib/skiff/node.pub")" = "$key" ] || fail "node.pub differs from the printed key"
second=$(boot)
[ "$second" = "$(echo "$first" | sed 's/ (new)$//')" ] || fail "second boot printed: $second"
echo "   second boot: same key"

if sh systemd/install-rootfs.sh "$root" --arch arm64 --binary "$cross" > "$work/again.log" 2>&1; then
    fail "installed into a root that holds a node key"
fi
grep -q 'node key' "$work/again.log" || fail "refusal does not say why: $(cat "$work/again.log")"
echo "   a root with a node key is refused"
echo "install-rootfs test ok"
