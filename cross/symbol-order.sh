#!/bin/sh
# Makes cross/symbol-order.txt: the functions an idle skiff agent and its launcher keep running,
# for the linker to lay out together (issue 7: agent RSS). cross/build.sh passes the file to
# rust-lld (--symbol-ordering-file) when it exists.
#
#   sudo sh cross/symbol-order.sh [SECONDS]        default 40 (covers a 30 s MQTT keepalive)
#
# Why: after start-up the agent and launcher unmap their executable's pages
# (agent/src/memtrim.rs); what stays resident is the code the idle loops run (MQTT keepalive,
# metrics ticks, timers, tokio, the launcher's poll loop). Each page fault maps the 64 KiB
# around it (the kernel's fault-around), so functions scattered over the binary keep ~4x their
# size resident. Laid out side by side, they fault in as one block.
#
# How: builds x86_64 with symbols (SKIFF_SYMBOLS=1 cross/build.sh: same code, layout and symbol
# names as the stripped build), puts a uprobe on every function of it (tracefs uprobe_events;
# hits are counted per function), then starts mosquitto and the agent on an empty node with
# the configuration skiff-footprint measures (metrics every second). The probes' counts are
# read when the launcher and then the agent call memtrim::release_startup_pages, and 3 +
# SECONDS after the node's first metrics message (skiff-footprint reads "idle" 3 s after the
# node is online). Written out by mangled name, with every alias: first the functions run
# after the agent's release (the idle loops of both processes, the first MQTT exchange),
# most-called first; then those run only between the two releases (the launcher serving the
# agent's start-up requests, mixed with the agent's last start-up steps). For aarch64 (built
# with symbols too) the same functions are looked up by their name without the trailing hash
# (`17h<16 hex>E`, which differs per target) and appended: one file serves both targets, the
# linker skips the names a target lacks.
#
# A stale list never breaks a build: names that no longer exist are skipped (lld
# --no-warn-symbol-ordering), the others are still placed first. Rerun after changes to the idle
# paths or a toolchain/dependency update; `skiff-footprint` shows the effect.
#
# Needs root (tracefs, cgroups), mosquitto, and the targets of cross/build.sh. Environment:
#   SKIFF_ORDER_TARGET_DIR  cargo target dir for the symbol builds (default target/symbol-order)
#   SKIFF_ORDER_ARCHES      targets to map the list to besides x86_64 (default aarch64)
#   SKIFF_ORDER_NO_BUILD=1  use the symbol builds already in SKIFF_ORDER_TARGET_DIR
#   SKIFF_ORDER_SAVE=DIR    keep the hit counts (uprobe_profile at each step) in DIR
#   SKIFF_ORDER_MAP_ONLY=1  no profile: map the x86_64 names of the present list to the other
#                           targets again (after building them)
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-40}
tdir=${SKIFF_ORDER_TARGET_DIR:-$root/target/symbol-order}
arches=${SKIFF_ORDER_ARCHES-aarch64}
out=$root/cross/symbol-order.txt
tracefs=/sys/kernel/tracing
[ -d $tracefs/events ] || tracefs=/sys/kernel/debug/tracing
if [ ! -w $tracefs/uprobe_events ]; then
    echo "cross/symbol-order.sh: needs root and tracefs with uprobe events ($tracefs)" >&2
    exit 1
fi
command -v mosquitto >/dev/null || { echo "cross/symbol-order.sh: needs mosquitto" >&2; exit 1; }

if [ "${SKIFF_ORDER_NO_BUILD:-0}" != 1 ]; then
    # shellcheck disable=SC2086 # word splitting of the arch list is intended
    CARGO_TARGET_DIR=$tdir SKIFF_SYMBOLS=1 sh cross/build.sh x86_64 $arches
fi
bin=$tdir/x86_64-unknown-linux-musl/${SKIFF_PROFILE:-dist}/skiff
work=$(mktemp -d "${TMPDIR:-/tmp}/skiff-order.XXXXXX")
group=skiff_order_$$
agent=
broker=
cleanup() {
    [ -z "$agent" ] || { kill "$agent" 2>/dev/null; wait "$agent" 2>/dev/null || true; }
    [ -z "$broker" ] || { kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null || true; }
    if [ -d $tracefs/events/$group ]; then
        echo 0 > $tracefs/events/$group/enable 2>/dev/null || true
        echo "-:$group/" >> $tracefs/uprobe_events || true # the whole group
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Function symbols -> file offsets (static non-PIE: the PT_LOAD segment maps offset to address).
# One probe per address; aliases at the same address are all written out.
readelf -lW "$bin" | awk '$1 == "LOAD" && / R?W?E / { print $2, $3 }' > "$work/text-seg"
read -r seg_off seg_vaddr < "$work/text-seg"
nm --defined-only -S "$bin" | awk -v off="$seg_off" -v va="$seg_vaddr" '
    function hex(s,   i, c, v) { v = 0; s = tolower(s); sub(/^0x/, "", s)
        for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", substr(s, i, 1)) - 1; v = v * 16 + c }
        return v }
    $3 ~ /^[tTwW]$/ && NF == 4 && hex($2) > 0 {
        printf "%d %s\n", hex($1) - hex(va) + hex(off), $4 }' | sort -n -k1,1 > "$work/funcs"
awk '{ if ($1 != last) print $1; last = $1 }' "$work/funcs" > "$work/offsets"
echo "symbol-order: $(wc -l < "$work/offsets") functions in $bin" >&2

if [ "${SKIFF_ORDER_MAP_ONLY:-0}" = 1 ]; then
    # No new profile: the x86_64 names of the present list, mapped again to the other targets.
    awk 'NR == FNR { have[$2] = 1; next } ($0 in have)' "$work/funcs" "$out" > "$work/x86_64"
else
    # A uprobe on every function, in place before the agent starts (uprobes follow the file into
    # every process that maps it). One write per probe: one that fails (an instruction uprobes
    # can't step) fails alone.
    awk -v g="$group" -v b="$bin" '{ printf "p:%s/f%d %s:0x%x\n", g, NR, b, $1 }' "$work/offsets" > "$work/probes"
    while read -r l; do echo "$l" >> $tracefs/uprobe_events 2>/dev/null || true; done < "$work/probes"
    if ! echo 1 > $tracefs/events/$group/enable 2>/dev/null; then
        for e in $tracefs/events/$group/f[0-9]*; do echo 1 > "$e/enable" 2>/dev/null || true; done
    fi
    echo "symbol-order: $(grep -c "^p:$group/" $tracefs/uprobe_events) probes on" >&2
    # Hit counts so far (uprobe_profile: file, event name without the group, hits): "event hits".
    snapshot() {
        awk -v b="$bin" '$1 == b && $2 ~ /^f[0-9]+$/ && $3 > 0 { print substr($2, 2), $3 }' \
            $tracefs/uprobe_profile > "$work/$1"
    }
    # memtrim::release_startup_pages: the launcher calls it first (at its start), the agent second
    # (start-up over). The probes keep the text mapping from being released, but the calls mark
    # the moments.
    release=$(awk '$2 ~ /7memtrim21release_startup_pages/ { print $1; exit }' "$work/funcs")
    release_ev=$(awk -v o="$release" '$1 == o { print NR; exit }' "$work/offsets")
    [ -n "$release_ev" ] || { echo "symbol-order: no memtrim::release_startup_pages in $bin" >&2; exit 1; }
    calls() { awk -v b="$bin" -v e="f$release_ev" '$1 == b && $2 == e { print $3 }' $tracefs/uprobe_profile; }

    # The node: an empty agent as skiff-footprint runs it, beside its own broker.
    port=$(awk 'BEGIN { srand(); print 20000 + int(rand() * 20000) }')
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
    mosquitto -c "$work/mosquitto.conf" > /dev/null 2>&1 &
    broker=$!
    printf 'node_id = "order"\ncluster = "order"\nbroker = "mqtt://127.0.0.1:%s"\ndata_dir = "%s/data"\nrun_dir = "%s/run"\ncgroup_parent = "skiff-order"\nlog = "warn"\nstop_grace_secs = 1\nmetrics_interval_secs = 1\n' \
        "$port" "$work" "$work" > "$work/agent.toml"
    sleep 0.5
    "$bin" agent --config "$work/agent.toml" > /dev/null 2> "$work/agent.err" &
    agent=$!
    wait_calls() {
        i=0
        while [ "$(calls)" -lt "$1" ]; do
            i=$((i + 1))
            [ $i -lt 1200 ] || { echo "symbol-order: no release call $1 in 120 s" >&2; exit 1; }
            kill -0 "$agent" 2>/dev/null || { echo "symbol-order: the agent died:" >&2; cat "$work/agent.err" >&2; exit 1; }
            sleep 0.1
        done
    }
    wait_calls 1
    snapshot launcher-released
    wait_calls 2
    snapshot agent-released
    echo "symbol-order: start-up over, counting for 3 + ${secs}s" >&2
    # What skiff-footprint calls idle: 3 s after the node is online (its first metrics message).
    timeout 20 mosquitto_sub -p "$port" -t 'skiff/order/nodes/order/metrics' -C 1 > /dev/null 2>&1 || true
    sleep 3
    sleep "$secs"
    snapshot end
    kill -0 "$agent" 2>/dev/null || { echo "symbol-order: the agent died:" >&2; cat "$work/agent.err" >&2; exit 1; }

    # First the functions run once both processes were past start-up, most-called first; then
    # the others run after the launcher's release (the launcher serving the agent's start-up
    # requests, mixed with the agent's last start-up steps; the counts are read a moment after
    # each release, so this tier also catches what ran only just after it), most-called first.
    # Every alias of each.
    awk 'FILENAME == ARGV[1] { off[FNR] = $1; next }
         FILENAME == ARGV[2] { a[$1] = $2; next }
         FILENAME == ARGV[3] { b[$1] = $2; next }
         { d = $2 - b[$1]; if (d > 0) print 0, -d, off[$1]; else if ($2 > a[$1]) print 1, a[$1] - $2, off[$1] }' \
        "$work/offsets" "$work/launcher-released" "$work/agent-released" "$work/end" |
        sort -k1,1n -k2,2n -k3,3n > "$work/ranked"
    awk 'FILENAME == ARGV[1] { rank[$3] = FNR; next } ($1 in rank) { print rank[$1], $2 }' \
        "$work/ranked" "$work/funcs" | sort -n -k1,1 | awk '{ print $2 }' > "$work/x86_64"
    [ -z "${SKIFF_ORDER_SAVE:-}" ] || cp "$work"/launcher-released "$work"/agent-released "$work"/end \
        "$work"/offsets "$work"/funcs "$work"/ranked "$SKIFF_ORDER_SAVE"/
    n=$(awk '$1 == 0' "$work/ranked" | wc -l)
    m=$(awk '$1 == 1' "$work/ranked" | wc -l)
    echo "symbol-order: $n functions run when idle, $m more after the launcher's release" >&2
    [ "$n" -gt 0 ] || { echo "symbol-order: no function was hit" >&2; exit 1; }
fi
n=$(wc -l < "$work/x86_64")
cp "$work/x86_64" "$work/all"
# Other targets: the same functions by name without the hash.
for arch in $arches; do
    case $arch in
        aarch64) triple=aarch64-unknown-linux-musl ;;
        armv7) triple=armv7-unknown-linux-musleabihf ;;
        *) echo "symbol-order: unknown arch $arch" >&2; exit 2 ;;
    esac
    other=$tdir/$triple/${SKIFF_PROFILE:-dist}/skiff
    nm --defined-only "$other" | awk '$2 ~ /^[tTwW]$/ { print $3 }' > "$work/$arch.names"
    sed 's/17h[0-9a-f]\{16\}E$//' "$work/x86_64" > "$work/keys"
    # A name shared by more than 3 functions (instances of one generic function, which the
    # hash tells apart) is left out: which of them the idle loop runs is not known.
    awk 'NR == FNR { k = $0; sub(/17h[0-9a-f]+E$/, "", k); c[k]++; by[k] = (k in by) ? by[k] "\n" $0 : $0; next }
         ($0 in by) && c[$0] <= 3 && !seen[$0]++ { print by[$0]; found++ }
         END { print found + 0 > "/dev/stderr" }' "$work/$arch.names" "$work/keys" \
        >> "$work/all" 2> "$work/found"
    echo "symbol-order: $arch: $(cat "$work/found") of $n names found" >&2
done
awk '!seen[$0]++' "$work/all" > "$out"
echo "symbol-order: $(wc -l < "$out") names in $out" >&2
