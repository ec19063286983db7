#!/bin/sh
# Prints the stripped size of the release binary for each target, with and without
# the tls feature (the release profile strips). Builds what it needs.
set -eu
for target in aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf mipsel-unknown-linux-gnu; do
    for features in default no-tls; do
        if [ "$features" = no-tls ]; then
            sh cross/build.sh "$target" --no-default-features > /dev/null 2>&1
        else
            sh cross/build.sh "$target" > /dev/null 2>&1
        fi
        bytes=$(wc -c < "target/$target/release/smtp-relayd")
        printf '%-32s %-8s %9d bytes\n' "$target" "$features" "$bytes"
    done
done
