#!/bin/sh
# Runs the whole integration suite against a cross-built binary under qemu-user.
# Usage: cross/test.sh TRIPLE [pytest options]
set -eu
target=${1:?usage: cross/test.sh TRIPLE [pytest options]}
shift
case "$target" in
    aarch64-unknown-linux-musl) runner="qemu-aarch64-static" ;;
    armv7-unknown-linux-gnueabihf) runner="qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
    mipsel-unknown-linux-gnu) runner="qemu-mipsel-static -L /usr/mipsel-linux-gnu" ;;
    *) echo "cross/test.sh: no qemu runner known for $target" >&2; exit 64 ;;
esac
bin="target/$target/release/smtp-relayd"
[ -x "$bin" ] || { echo "cross/test.sh: $bin missing; run make cross TARGET=$target" >&2; exit 66; }
SMTP_RELAYD_BIN="$bin" SMTP_RELAYD_RUNNER="$runner" exec python3 -m pytest -q tests "$@"
