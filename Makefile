# smtp-relayd: make demo | make test | make lint | make release
CARGO  ?= cargo
PYTHON ?= python3

.PHONY: all build release test unit integration lint demo clean cross cross-test

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Unit tests (tables of byte strings beside the code), then the integration suite:
# the real binary on loopback driven by smtplib, curl and raw sockets, with the test
# sink and aiosmtpd as smarthosts.
test: unit integration

unit:
	$(CARGO) test

integration: build
	$(PYTHON) -m pytest -q tests

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --all-targets -- -D warnings

# The relay and a local sink on loopback, one message through, the delivered message printed.
demo: release
	SMTP_RELAYD_BIN=target/release/smtp-relayd bash tests/demo.sh

# Cross builds, run under qemu-user: make cross TARGET=<triple>, make cross-test TARGET=<triple>.
TARGET ?= aarch64-unknown-linux-musl

cross:
	sh cross/build.sh $(TARGET)

cross-test: cross
	sh cross/test.sh $(TARGET)

clean:
	$(CARGO) clean
