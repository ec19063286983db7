# smtp-relayd: make demo | make test | make lint | make release
CARGO  ?= cargo
PYTHON ?= python3

.PHONY: all build release test unit integration lint demo clean cross cross-test size install uninstall bench fuzz \
	powercut soak

PREFIX ?= /usr/local
DESTDIR ?=
SHELL_SCRIPTS = benches/micro.sh cross/build.sh cross/test.sh cross/size.sh cross/init.d/smtp-relayd cross/runit/run \
	cross/runit/log/run cross/openwrt/files/smtp-relayd.init tests/demo.sh tests/deps.sh .ci/run fuzz/run.sh

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
	PYTHON=$(PYTHON) sh tests/deps.sh
	$(PYTHON) -m pytest -q -rs tests

lint:
	shellcheck $(SHELL_SCRIPTS)
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

# Performance, not a test: end-to-end ratios to the direct path (Postfix's smtp-source
# and smtp-sink, unpacked from Debian's package), and instruction counts of the hot
# paths under callgrind. Installs what it needs on a fresh machine. On x86_64 it also
# builds the static musl binary, as devices run it, for its idle RSS.
bench: release
	command -v valgrind > /dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	-[ "$$(uname -m)" != x86_64 ] || { rustup target add x86_64-unknown-linux-musl && \
		CC_x86_64_unknown_linux_musl=gcc $(CARGO) build --release --target x86_64-unknown-linux-musl; }
	$(PYTHON) benches/e2e.py
	$(PYTHON) benches/failover.py
	sh benches/micro.sh

# libFuzzer (cargo-fuzz) on every parsing entry point, FUZZ_SECONDS each, from the
# committed seed corpora in fuzz/corpus; fails on any crash, leak, timeout or OOM.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz > /dev/null || $(CARGO) install cargo-fuzz --locked
	sh fuzz/run.sh $(FUZZ_SECONDS)

# Power cuts, not only kill -9 (needs root, /dev/fuse, fuse3 and mfusepy): the spool on
# tests/strictfs.py, cut N times under load at seeded random points, in runs of 10 cuts
# alternating the lose and mix policies, each run checked; then each scenario's sweep
# (a cut after each of its operations) for SWEEP_SEEDS seeds. Prints cuts survived/run.
N ?= 200
SEED ?= 1
SWEEP_SEEDS ?= 5
powercut: build
	PYTHON=$(PYTHON) sh tests/deps.sh
	$(PYTHON) tests/powercut.py --cuts $(N) --seed $(SEED) --sweep-seeds $(SWEEP_SEEDS)

# Steady traffic for MINUTES while the smarthost flaps, a kill -9 half way; RSS slope,
# descriptors, spool files and exactly-once delivery at the end. On the release binary.
MINUTES ?= 30
soak: release
	PYTHON=$(PYTHON) sh tests/deps.sh
	SMTP_RELAYD_BIN=target/release/smtp-relayd $(PYTHON) tests/soak.py --minutes $(MINUTES)

# Stripped sizes of the release binary per target, with and without TLS.
size:
	sh cross/size.sh

# The binary (with sendmail and mailq links to it), the systemd unit, a commented sample config (never over an existing
# one) and the README as documentation.
install: release
	install -D -m 0755 target/release/smtp-relayd $(DESTDIR)$(PREFIX)/sbin/smtp-relayd
	ln -sf smtp-relayd $(DESTDIR)$(PREFIX)/sbin/sendmail
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sf ../sbin/smtp-relayd $(DESTDIR)$(PREFIX)/bin/mailq
	install -D -m 0644 systemd/smtp-relayd.service $(DESTDIR)$(PREFIX)/lib/systemd/system/smtp-relayd.service
	install -D -m 0644 cross/smtp-relayd.conf.sample $(DESTDIR)/etc/smtp-relayd.conf.sample
	[ -e $(DESTDIR)/etc/smtp-relayd.conf ] || install -m 0644 cross/smtp-relayd.conf.sample $(DESTDIR)/etc/smtp-relayd.conf
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/smtp-relayd/README.md

# Removes what install put there, except /etc/smtp-relayd.conf (your settings).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/smtp-relayd $(DESTDIR)$(PREFIX)/lib/systemd/system/smtp-relayd.service
	[ ! -L $(DESTDIR)$(PREFIX)/sbin/sendmail ] || rm -f $(DESTDIR)$(PREFIX)/sbin/sendmail
	[ ! -L $(DESTDIR)$(PREFIX)/bin/mailq ] || rm -f $(DESTDIR)$(PREFIX)/bin/mailq
	rm -f $(DESTDIR)/etc/smtp-relayd.conf.sample $(DESTDIR)$(PREFIX)/share/doc/smtp-relayd/README.md
	-rmdir $(DESTDIR)$(PREFIX)/share/doc/smtp-relayd

clean:
	$(CARGO) clean
