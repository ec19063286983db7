#!/bin/sh
# What the integration suite needs, installed when missing: pytest and aiosmtpd from
# PyPI, and (as root, with apt-get) the clients and tools some tests drive. A tool that
# cannot be installed leaves its tests skipped, with the reason printed.
set -u
PYTHON=${PYTHON:-python3}
# mfusepy: the FUSE binding of the power-cut tests' filesystem (tests/strictfs.py).
if ! "$PYTHON" -c 'import pytest, aiosmtpd, mfusepy' 2>/dev/null; then
    "$PYTHON" -m pip install -q --disable-pip-version-check pytest aiosmtpd mfusepy
fi
missing=""
for tool in curl:curl swaks:swaks mailx:bsd-mailx openssl:openssl nmap:nmap ip:iproute2 fusermount3:fuse3; do
    command -v "${tool%%:*}" > /dev/null || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        # shellcheck disable=SC2086 # one word per package
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            $missing libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl; } > /dev/null ||
            echo "tests/deps.sh: could not install$missing; their tests will be skipped" >&2
    else
        echo "tests/deps.sh: missing$missing (install them as root); their tests will be skipped" >&2
    fi
fi
exit 0
