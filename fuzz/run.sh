#!/bin/sh
# Runs every fuzz target for SECONDS seconds each (default 60) with the committed seed
# corpus; new inputs go to target/fuzz-corpus, crashes to fuzz/artifacts. Exits non-zero
# on the first crash, leak, timeout or out-of-memory.
#
# libFuzzer needs -Z flags: nightly when it is installed, else the stable toolchain
# with RUSTC_BOOTSTRAP=1 (stable ships the sanitizer runtimes too).
set -eu
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
TARGETS=${TARGETS:-"command session data reply config sendmail_header rewrite_from spool token_endpoint"}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    CARGO="cargo +nightly"
else
    CARGO="cargo"
    export RUSTC_BOOTSTRAP=1
fi
$CARGO fuzz build -O
for t in $TARGETS; do
    scratch=../target/fuzz-corpus/$t
    mkdir -p "$scratch"
    log=../target/fuzz-$t.log
    if ! $CARGO fuzz run -O "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED (log: target/fuzz-$t.log, input: fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz: $t ok: ${runs:-?} executions in ${SECONDS_EACH}s"
done
