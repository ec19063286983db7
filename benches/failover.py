#!/usr/bin/env python3
"""Several smarthosts, measured: the time failover costs when the first smarthost does
not answer, and the throughput of side-by-side deliveries to a slow smarthost.

1. Failover: smarthost a accepts TCP and never greets (a hung server), b is a sink.
   The first message waits for a's timeout (smarthost_timeout, here 5 s), then goes
   to b; a is then skipped, so the next 20 messages go to b at once.
2. Side by side: one smarthost that takes 2 s per message (a provider that scans),
   20 messages, with smarthost_connections 1, 2 and 4: about 40 s / N.

Uses the release binary and the test suite's scripted sink; prints its figures.
"""
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from sink import Plan, Sink  # noqa: E402

BINARY = os.environ.get("SMTP_RELAYD_BIN", os.path.join(ROOT, "target", "release", "smtp-relayd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hung:
    """Accepts connections and never says anything."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)


def start(conf_text, d):
    port = free_port()
    conf = os.path.join(d, "relay.conf")
    with open(conf, "w") as f:
        f.write(f"listen 127.0.0.1:{port}\nhostname bench.test\nspool {d}/spool\n"
                "smarthost_tls none\nretry_min 30s\nretry_max 30s\nmax_connections_per_ip 1000\n" + conf_text)
    log = open(os.path.join(d, "relay.log"), "wb")
    proc = subprocess.Popen([BINARY, "-c", conf], stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("relay did not start")


def send(port, i):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail("bench@example.net", ["ops@example.com"], f"Subject: m{i}\r\n\r\nbench\r\n".encode())


def failover():
    d = tempfile.mkdtemp(prefix="failover-")
    hung, b = Hung(), Sink().start()
    proc, port = start(f"smarthost a 127.0.0.1:{hung.port}\n    smarthost_timeout 5s\n"
                       f"smarthost b 127.0.0.1:{b.port}\n", d)
    try:
        t0 = time.time()
        send(port, 0)
        b.wait_for(1, timeout=60)
        first = time.time() - t0
        t1 = time.time()
        for i in range(1, 21):
            send(port, i)
        b.wait_for(21, timeout=60)
        rest = time.time() - t1
    finally:
        proc.terminate()
        proc.wait()
        b.stop()
        shutil.rmtree(d, ignore_errors=True)
    print(f"failover, first smarthost hung (smarthost_timeout 5s): first message delivered by the "
          f"second after {first:.2f} s; the next 20 (first smarthost skipped) in {rest:.2f} s "
          f"({rest / 20 * 1000:.0f} ms each, end to end)")


def side_by_side(n):
    d = tempfile.mkdtemp(prefix="lanes-")
    a = Sink(plan=Plan(data_end=["delay 2 250 2.0.0 scanned and queued"])).start()
    proc, port = start(f"smarthost a 127.0.0.1:{a.port}\n    smarthost_connections {n}\n"
                       "    smarthost_idle 10s\n", d)
    try:
        t0 = time.time()
        for i in range(20):
            send(port, i)
        a.wait_for(20, timeout=120)
        took = time.time() - t0
    finally:
        proc.terminate()
        proc.wait()
        a.stop()
        shutil.rmtree(d, ignore_errors=True)
    print(f"20 messages to a smarthost taking 2 s each, smarthost_connections {n}: {took:5.1f} s "
          f"(40 s / {n} = {40 / n:4.1f} s; {a.max_active} connection(s) at once)")
    return took


def main():
    failover()
    for n in (1, 2, 4):
        side_by_side(n)


if __name__ == "__main__":
    main()
