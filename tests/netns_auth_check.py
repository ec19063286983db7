#!/usr/bin/env python3
"""Run inside a private network namespace (unshare -n) by test_auth_inbound.py.

The namespace's own loopback interface gets 192.0.2.1 (a documentation address that
is not loopback); smtp-relayd listens there with `auth_plaintext yes`, and the check is
that AUTH is offered on 127.0.0.1 but not on 192.0.2.1 before TLS. No traffic leaves
the namespace. Prints what it saw; exits 0 when both hold."""
import os
import smtplib
import subprocess
import sys
import tempfile
import time

binary, users = sys.argv[1], sys.argv[2]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"], check=True)
work = tempfile.mkdtemp()
conf = os.path.join(work, "relay.conf")
with open(conf, "w") as f:
    f.write(f"listen 127.0.0.1:2525\nlisten 192.0.2.1:2525\nhostname relay.test\nspool {work}/spool\n"
            f"smarthost 127.0.0.1:2626\nsmarthost_tls none\nauth_users {users}\nauth_plaintext yes\n"
            "allow none\n")
runner = os.environ.get("SMTP_RELAYD_RUNNER", "").split()
relay = subprocess.Popen(runner + [binary, "-c", conf], stderr=subprocess.DEVNULL)
try:
    offered = {}
    for host in ["127.0.0.1", "192.0.2.1"]:
        for _ in range(100):
            try:
                s = smtplib.SMTP(host, 2525, timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        s.ehlo()
        offered[host] = s.has_extn("auth")
        code = s.docmd("AUTH", "PLAIN AGNhbTEAeA==")[0]
        s.quit()
        print(f"{host}: AUTH offered={offered[host]}, AUTH answered {code}")
        offered[host + " code"] = code
    ok = offered["127.0.0.1"] and not offered["192.0.2.1"] and offered["192.0.2.1 code"] == 538
    sys.exit(0 if ok else 1)
finally:
    relay.terminate()
    relay.wait()
