#!/bin/sh
# Builds the fuzz targets on stable Rust (libFuzzer through libfuzzer-sys, coverage through
# rustc's SanitizerCoverage pass: no nightly, no cargo-fuzz) and runs each for a bounded time
# on its corpus in fuzz/corpus/<target>/. See fuzz/README.md.
#
#   sh fuzz/run.sh                 # every target, SKIFF_FUZZ_SECONDS (default 5) each
#   sh fuzz/run.sh message 600     # one target, ten minutes
#
# New inputs libFuzzer finds go to target/fuzz/new-corpus/<target>/ (not the repo's corpus:
# add the interesting ones by hand, `-merge=1` minimises). A crash stops the script with the
# input in target/fuzz/artifacts/<target>/; the exit status is non-zero.
set -eu
cd "$(dirname "$0")"

# libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
if ! command -v c++ >/dev/null && [ "${SKIFF_SKIP_INSTALL:-0}" != 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

TARGETS="message task_definition image_manifest tar_path config policy"
if [ -n "${1:-}" ]; then TARGETS=$1; fi
SECONDS_EACH=${2:-${SKIFF_FUZZ_SECONDS:-5}}
HOST=$(rustc -vV | sed -n 's/^host: //p')
# Its own target dir: other flags than the main build, nothing to share.
export CARGO_TARGET_DIR="${SKIFF_FUZZ_TARGET_DIR:-$(cd .. && pwd)/target/fuzz}"
# What `cargo fuzz build --sanitizer none` passes, all of it stable: inline 8-bit edge
# counters, the PC table, compare tracing, and `cfg(fuzzing)`. `--target` keeps the flags off
# build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

bins=""
for t in $TARGETS; do bins="$bins --bin $t"; done
# shellcheck disable=SC2086
cargo build --release --locked --target "$HOST" $bins

out="$CARGO_TARGET_DIR/$HOST/release"
status=0
for t in $TARGETS; do
    mkdir -p "$CARGO_TARGET_DIR/new-corpus/$t" "$CARGO_TARGET_DIR/artifacts/$t"
    log="$CARGO_TARGET_DIR/$t.log"
    # -rss_limit_mb: a run over 512 MiB resident is a failure; any one allocation over 64 MiB
    # aborts in the targets' allocator (src/limit_alloc.rs: libFuzzer's -malloc_limit_mb needs
    # a sanitizer). The decoders bound their inputs to at most 4 MiB.
    if "$out/$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 \
        -max_len=262144 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$CARGO_TARGET_DIR/artifacts/$t/" \
        "$CARGO_TARGET_DIR/new-corpus/$t" "corpus/$t" >"$log" 2>&1; then
        printf '%-16s %s runs in %ss, %s new inputs, peak RSS %s MiB, %s\n' "$t" \
            "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")" "$SECONDS_EACH" \
            "$(sed -n 's/^stat::new_units_added: *//p' "$log")" \
            "$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")" \
            "$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)"
    else
        echo "fuzz $t FAILED (log: $log, input: $CARGO_TARGET_DIR/artifacts/$t/):" >&2
        grep -vE '^#[0-9]+|^"|^INFO:|^WARNING: Failed to find' "$log" | tail -40 >&2
        status=1
    fi
done
exit $status
