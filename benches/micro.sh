#!/bin/sh
# Instruction counts for the hot paths under callgrind: repeatable on a noisy machine.
# Each case runs N and 0 times; the difference over N is the cost of one operation.
set -eu
cargo build -q --release --example hot_paths
bin=target/release/examples/hot_paths
n=2000
total() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
printf '%-10s %14s\n' "hot path" "instructions"
for case in parse unstuff stuff session reply; do
    with=$(total "$case" "$n")
    without=$(total "$case" 0)
    printf '%-10s %14d  per operation (%s)\n' "$case" $(( (with - without) / n )) \
        "$(case $case in parse) echo 'one command line';; unstuff) echo '1 KiB DATA';;
           stuff) echo '1 KiB for sending';; session) echo 'EHLO+MAIL+RCPT+DATA of 1 KiB';;
           reply) echo 'smarthost EHLO reply, 8 lines, and a final reply';; esac)"
done
