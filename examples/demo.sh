#!/bin/sh
# The skiff demo: no broker, no registry. Builds skiff, builds a busybox OCI image from Debian's
# busybox-static, imports it into a scratch store and runs the agent in local mode on the task
# definitions in examples/demo/ (a service that keeps running and a one-shot task). Ctrl-C stops
# the agent, which stops its tasks. Run as root.
#
#   sudo sh examples/demo.sh
set -eu
cd "$(dirname "$0")/.."
if [ ! -x /bin/busybox ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
fi
cargo build --release --locked
work=${SKIFF_DEMO_DIR:-/tmp/skiff-demo}
mkdir -p "$work"
sh tests/fixtures/make-busybox-oci.sh "$work/busybox-oci"
./target/release/skiff image --data-dir "$work/data" import "$work/busybox-oci" --tag busybox
exec ./target/release/skiff agent --local examples/demo --data-dir "$work/data" --run-dir "$work/run"
