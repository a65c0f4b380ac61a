#!/bin/sh
# Installs skiff into a mounted root filesystem: the SD-card image step, for pi-gen,
# rpi-image-gen, Yocto or a hand-made image. Run as root on the build machine:
#
#   sh systemd/install-rootfs.sh ROOT [--arch arm64|armv7|amd64] [--binary FILE]
#        [--config FILE] [--image OCI[=NAME]]... [--tasks DIR] [--host-skiff FILE]
#
#   ROOT           the image's root file system, mounted (e.g. /mnt/rootfs, pi-gen's ${ROOTFS_DIR})
#   --arch         the device's CPU (default arm64); picks target/cross/skiff-<arch> and the
#                  platform preloaded images are imported for
#   --binary       the skiff binary to install (default: target/cross/skiff-<aarch64|armv7|x86_64>,
#                  built by `sh cross/build.sh <arch>`)
#   --config       agent.toml to install as /etc/skiff/agent.toml (default systemd/agent.toml;
#                  an existing /etc/skiff/agent.toml in ROOT is kept unless --config is given)
#   --image        an OCI image layout (directory or tar) to preload into the image store,
#                  named NAME (e.g. busybox) when given; repeatable
#   --tasks        task definitions (*.json) for local mode, copied to /etc/skiff/tasks
#   --host-skiff   a skiff that runs on this machine, for importing images (default: the
#                  installed binary when it runs here, else target/release/skiff, target/debug/skiff)
#
# Installs /usr/local/bin/skiff (0755), /etc/systemd/system/skiff.service (0644),
# /usr/lib/tmpfiles.d/skiff.conf (0644), /etc/skiff/agent.toml (0644), the enable symlink
# /etc/systemd/system/multi-user.target.wants/skiff.service, the data dir (0700) with the
# preloaded images. The node key is NOT made here: every card cloned from the image must get
# its own, so the unit's ExecStartPre (`skiff node init`) makes it on first boot and prints the
# public key to the journal. An image that already holds a node key is refused.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

die() { echo "install-rootfs.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
case $1 in -h | --help) usage ;; esac
root=$1
shift
arch=arm64
binary=
config=
tasks=
host_skiff=
images=
nl='
'
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --binary) binary=${2:?--binary needs a file}; shift 2 ;;
        --config) config=${2:?--config needs a file}; shift 2 ;;
        --image) images="$images${2:?--image needs a layout}$nl"; shift 2 ;;
        --tasks) tasks=${2:?--tasks needs a directory}; shift 2 ;;
        --host-skiff) host_skiff=${2:?--host-skiff needs a file}; shift 2 ;;
        -h | --help) usage ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

case $arch in
    arm64 | aarch64) triple_arch=aarch64; platform=linux/arm64/v8 ;;
    armv7 | arm) triple_arch=armv7; platform=linux/arm/v7 ;;
    amd64 | x86_64) triple_arch=x86_64; platform=linux/amd64 ;;
    *) die "unknown --arch '$arch' (arm64, armv7 or amd64)" ;;
esac
[ -d "$root" ] || die "$root is not a directory"
root=$(cd "$root" && pwd)
[ "$root" != / ] || die "refusing to install into / (this is for image roots; see README.md)"
binary=${binary:-$repo/target/cross/skiff-$triple_arch}
[ -f "$binary" ] || die "$binary not found: build it with 'sh cross/build.sh $triple_arch' or pass --binary"
[ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"
[ -z "$tasks" ] || [ -d "$tasks" ] || die "--tasks $tasks: not a directory"

# The data dir the installed config names (default /var/lib/skiff).
conf_src=${config:-$repo/systemd/agent.toml}
if [ -z "$config" ] && [ -f "$root/etc/skiff/agent.toml" ]; then
    conf_src=$root/etc/skiff/agent.toml
fi
data_dir=$(sed -n 's/^[[:space:]]*data_dir[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$conf_src" | tail -n 1)
data_dir=${data_dir:-/var/lib/skiff}
case $data_dir in /*) ;; *) die "data_dir in $conf_src must be absolute: $data_dir" ;; esac
[ ! -e "$root$data_dir/node.key" ] || die "$root$data_dir/node.key exists: an image must not carry a node key (each device makes its own on first boot)"

echo "installing skiff ($(file -b "$binary" | cut -d, -f1-2)) into $root"
install -D -m 0755 "$binary" "$root/usr/local/bin/skiff"
install -D -m 0644 "$repo/systemd/skiff.service" "$root/etc/systemd/system/skiff.service"
install -D -m 0644 "$repo/systemd/skiff.tmpfiles" "$root/usr/lib/tmpfiles.d/skiff.conf"
install -d -m 0755 "$root/etc/skiff"
if [ "$conf_src" != "$root/etc/skiff/agent.toml" ]; then
    install -m 0644 "$conf_src" "$root/etc/skiff/agent.toml"
fi
if [ -n "$tasks" ]; then
    install -d -m 0755 "$root/etc/skiff/tasks"
    for f in "$tasks"/*.json; do
        [ -e "$f" ] || continue
        install -m 0644 "$f" "$root/etc/skiff/tasks/"
    done
fi
# What `systemctl enable skiff` does (it can't run against a foreign, unbooted root).
install -d -m 0755 "$root/etc/systemd/system/multi-user.target.wants"
ln -sfn /etc/systemd/system/skiff.service "$root/etc/systemd/system/multi-user.target.wants/skiff.service"
install -d -m 0700 "$root$data_dir"

if [ -n "$images" ]; then
    if [ -z "$host_skiff" ]; then
        if "$root/usr/local/bin/skiff" --version >/dev/null 2>&1; then
            host_skiff=$root/usr/local/bin/skiff
        elif [ -x "$repo/target/release/skiff" ]; then
            host_skiff=$repo/target/release/skiff
        elif [ -x "$repo/target/debug/skiff" ]; then
            host_skiff=$repo/target/debug/skiff
        else
            die "no skiff that runs here to import images: cargo build --release, or --host-skiff"
        fi
    fi
    echo "$images" | while IFS= read -r spec; do
        [ -n "$spec" ] || continue
        layout=${spec%%=*}
        set -- --platform "$platform"
        [ "$layout" = "$spec" ] || set -- "$@" --tag "${spec#*=}"
        "$host_skiff" image --config /dev/null --data-dir "$root$data_dir" import "$layout" "$@"
    done
fi
echo "done: skiff enabled in $root; first boot makes the node key (journalctl -u skiff | grep 'node key')"
