#!/bin/sh
# Builds the release binary for one target: target/<triple>/release/smtp-relayd.
# Usage: cross/build.sh TRIPLE [cargo options, e.g. --no-default-features]
# Linkers and C compilers per target are in .cargo/config.toml; cross/README.md says
# what to install first.
set -eu
target=${1:?usage: cross/build.sh TRIPLE [cargo options]}
shift
case "$target" in
    mipsel-unknown-linux-gnu)
        # Tier 3: no prebuilt std; build it (nightly) with the abort panic runtime.
        exec cargo +nightly build --release --target "$target" -Zbuild-std=std,panic_abort "$@"
        ;;
    *)
        exec cargo build --release --target "$target" "$@"
        ;;
esac
