"""Who may send what: sender and recipient patterns, per-user senders, qualification
and aliases, rewriting on the way out, and the per-client limits."""
import os
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import BINARY, RUNNER, Client


def deliver(port, sender, rcpts, body=b"Subject: t\r\n\r\nhello\r\n"):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        return s.sendmail(sender, rcpts, body)


def test_sender_and_recipient_patterns(sink, make_relay):
    relay = make_relay(sink.port, allow_sender=["*@example.net", "alerts@*.example.org"],
                       allow_recipient="*@example.org").start()
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        deliver(relay.port, "someone@evil.test", ["ops@example.org"])
    assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        deliver(relay.port, "cam1@example.net", ["victim@gmail.test"])
    [(code, text)] = e.value.recipients.values()
    assert code == 553 and text.startswith(b"5.7.1")
    # Case does not matter; a subdomain pattern takes only subdomains.
    assert deliver(relay.port, "Cam1@EXAMPLE.net", ["ops@example.org", "bad@example.com"]) == {
        "bad@example.com": (553, b"5.7.1 Error: recipient address not allowed by policy")}
    deliver(relay.port, "alerts@gw.example.org", ["ops@example.org"])
    with pytest.raises(smtplib.SMTPSenderRefused):
        deliver(relay.port, "alerts@example.org", ["ops@example.org"])
    msgs = sink.wait_for(2)
    # Two connections to the smarthost: the order of arrival is not the order sent.
    assert sorted((m["sender"], m["rcpts"]) for m in msgs) == [
        ("Cam1@EXAMPLE.net", ["ops@example.org"]), ("alerts@gw.example.org", ["ops@example.org"])]
    log = relay.log()
    assert "reject: MAIL from [127.0.0.1]: 550 5.7.1 sender not allowed; from=<someone@evil.test>" in log
    assert "reject: RCPT from [127.0.0.1]: 553 5.7.1 recipient not allowed; to=<victim@gmail.test>" in log


def test_users_file_binds_senders(sink, make_relay, tmp_path):
    def crypt(pw):
        return subprocess.run(["openssl", "passwd", "-6", "-salt", "saltsalt", pw],
                              capture_output=True, text=True, check=True).stdout.strip()
    users = tmp_path / "users"
    users.write_text(f"cam1:{crypt('pw1')}:cam1@example.net,*@*.cams.example.net\nboss:{crypt('pw2')}\n")
    users.chmod(0o600)
    relay = make_relay(sink.port, auth_users=str(users), auth_plaintext="yes", allow="none").start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.login("cam1", "pw1")
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("boss@example.net", ["ops@example.org"], b"Subject: x\r\n\r\nx\r\n")
        assert e.value.smtp_code == 550
        s.sendmail("cam1@example.net", ["ops@example.org"], b"Subject: x\r\n\r\nx\r\n")
        s.sendmail("a@door.cams.example.net", ["ops@example.org"], b"Subject: x\r\n\r\nx\r\n")
    # A user without a list may use any sender.
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.login("boss", "pw2")
        s.sendmail("anyone@example.com", ["ops@example.org"], b"Subject: x\r\n\r\nx\r\n")
    assert sorted(m["sender"] for m in sink.wait_for(3)) == [
        "a@door.cams.example.net", "anyone@example.com", "cam1@example.net"]
    assert "550 5.7.1 sender not allowed; from=<boss@example.net>, sasl_username=cam1" in relay.log()


def test_bare_names_qualified_and_aliased(sink, make_relay, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("# who gets what\nops: a@example.org, b@example.org\nroot: nobody@example.org\n")
    relay = make_relay(sink.port, qualify_domain="home.example.net", aliases=str(aliases),
                       alias="root admin@example.org").start()
    c = Client(relay.port)
    assert c.cmd("EHLO cron")[:3] == "250"
    assert c.cmd("MAIL FROM:<cron>")[:3] == "250"
    for r in ["<root>", "<Ops@relay.test>", "<guest>", "<Postmaster>"]:
        assert c.cmd(f"RCPT TO:{r}")[:3] == "250", r
    assert c.cmd("DATA")[:3] == "354"
    assert c.cmd(b"Subject: cron\r\n\r\nout\r\n.\r\n")[:3] == "250"
    c.cmd("QUIT")
    [m] = sink.wait_for(1)
    assert m["sender"] == "cron@home.example.net"
    # `alias` lines win over the file; name@hostname is ours too.
    assert m["rcpts"] == ["admin@example.org", "a@example.org", "b@example.org",
                          "guest@home.example.net", "Postmaster@home.example.net"]


def test_sendmail_uses_qualify_domain_aliases_and_recipient_policy(sink, make_relay, tmp_path):
    relay = make_relay(sink.port, qualify_domain="home.example.net", alias="root admin@example.org",
                       allow_recipient="*@example.org").start()
    env = dict(os.environ, SMTP_RELAYD_CONFIG=relay.conf_path)
    run = RUNNER + [BINARY, "sendmail"]
    r = subprocess.run(run + ["-f", "cron", "root"], input=b"Subject: x\n\nbody\n", env=env, capture_output=True)
    assert r.returncode == 0, r.stderr
    [m] = sink.wait_for(1)
    assert m["sender"] == "cron@home.example.net" and m["rcpts"] == ["admin@example.org"]
    r = subprocess.run(run + ["someone@elsewhere.test"], input=b"Subject: x\n\nbody\n", env=env,
                       capture_output=True)
    assert r.returncode == 77 and b"not allowed by allow_recipient" in r.stderr
    assert relay.files("queue") == []


def test_rewrite_sender_and_from(sink, make_relay):
    relay = make_relay(sink.port, rewrite_sender="box@example.net", rewrite_from="box@example.net").start()
    body = (b"From: Camera 1 <cam1@lan>\r\nTo: ops@example.org\r\nSubject: motion\r\n\r\n"
            b"From: this line is body text\r\n.dot\r\n")
    deliver(relay.port, "cam1@lan", ["ops@example.org"], body)
    # The null sender stays null (a bounce must not bounce).
    deliver(relay.port, "", ["ops@example.org"], b"From: MAILER-DAEMON@lan\r\nReply-To: x@lan\r\n\r\nbounce\r\n")
    msgs = sink.wait_for(2)
    first = next(m for m in msgs if b"Subject: motion" in m["content"])
    second = next(m for m in msgs if m is not first)
    assert first["sender"] == "box@example.net"
    head, _, rest = first["content"].partition(b"\r\n\r\n")
    assert b"\r\nFrom: Camera 1 <box@example.net>\r\nReply-To: Camera 1 <cam1@lan>\r\nTo: ops@example.org\r\n" in head
    assert rest == b"From: this line is body text\r\n.dot\r\n"
    assert b"\r\n..dot\r\n" in first["wire"]
    # SIZE= told the upstream the size of what it got.
    mail = [c for c in sink.commands if c.startswith(b"MAIL FROM:<box@example.net>")][0]
    assert f"SIZE={len(first['content'])}".encode() in mail
    assert second["sender"] == ""
    assert b"\r\nFrom: box@example.net\r\nReply-To: x@lan\r\n" in second["content"]
    # The spool kept the message as received.
    assert "from=<cam1@lan>" in relay.log()


def test_recipient_and_message_limits(sink, make_relay):
    relay = make_relay(sink.port, max_recipients=3, max_messages_per_connection=2).start()
    c = Client(relay.port)
    c.cmd("EHLO x")
    c.cmd("MAIL FROM:<a@example.net>")
    replies = [c.cmd(f"RCPT TO:<r{i}@example.org>") for i in range(5)]
    assert [r[:3] for r in replies] == ["250", "250", "250", "452", "452"]
    assert replies[3].startswith("452 4.5.3")
    c.cmd("RSET")
    for _ in range(2):
        assert c.cmd("MAIL FROM:<a@example.net>")[:3] == "250"
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        assert c.cmd(b"Subject: x\r\n\r\nx\r\n.\r\n")[:3] == "250"
    r = c.cmd("MAIL FROM:<a@example.net>")
    assert r.startswith("421 4.7.0") and c.closed()
    sink.wait_for(2)


def test_rate_limit_per_address(sink, make_relay):
    relay = make_relay(sink.port, rate_limit="3/60").start()
    for _ in range(3):
        deliver(relay.port, "a@example.net", ["b@example.org"])
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        deliver(relay.port, "a@example.net", ["b@example.org"])
    assert e.value.smtp_code == 450 and e.value.smtp_error.startswith(b"4.7.1")
    assert "450 4.7.1 message rate limit exceeded" in relay.log()
    # Another address has its own bucket.
    s = smtplib.SMTP(timeout=10, source_address=("127.0.0.2", 0))
    s.connect("127.0.0.1", relay.port)
    s.sendmail("a@example.net", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")
    s.quit()
    assert len(sink.wait_for(4)) == 4


def test_idle_connections_from_one_address_do_not_starve_another(sink, make_relay):
    # The defaults: workers 4, so at most 2 connections per address (loopback, exempt
    # by default as the box itself, is made subject to it here).
    relay = make_relay(sink.port, max_connections_per_ip=None, max_connections=300,
                       connection_limit_exempt="none").start()
    relay.wait_log(r"disconnect from")
    hogs, greetings = [], []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        hogs.append(s)
        greetings.append(s.recv(200))
    try:
        assert sum(g.startswith(b"220") for g in greetings) == 2
        refused = [g for g in greetings if not g.startswith(b"220")]
        assert len(refused) == 198 and all(g.startswith(b"421 4.7.0") for g in refused)
        # Another address is served at once and its mail goes through.
        t0 = time.monotonic()
        s = smtplib.SMTP(timeout=10, source_address=("127.0.0.2", 0))
        s.connect("127.0.0.1", relay.port)
        s.sendmail("a@example.net", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")
        s.quit()
        assert time.monotonic() - t0 < 5
        sink.wait_for(1)
        assert "too many connections from [127.0.0.1] (max_connections_per_ip 2)" in relay.log()
    finally:
        for s in hogs:
            s.close()
    # Once they are gone, the address may connect again (a worker gives its place
    # back just after it logs the disconnect).
    relay.wait_log(r"disconnect from \[127\.0\.0\.1\]", count=3)
    deadline = time.monotonic() + 10
    while True:
        greeting = Client(relay.port).greeting
        if greeting.startswith("220") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert greeting.startswith("220"), greeting


def test_loopback_is_exempt_from_the_per_address_limit_by_default(sink, make_relay):
    """Scripts on the box talk SMTP at the same moment: a third one is not refused,
    as Postfix exempts mynetworks; another address still has the limit."""
    relay = make_relay(sink.port, max_connections_per_ip=None,
                       connection_limit_exempt=["127.0.0.1", "::1"]).start()
    clients = [Client(relay.port) for _ in range(3)]
    try:
        assert [c.greeting[:3] for c in clients] == ["220"] * 3
        others = []
        for _ in range(3):
            s = socket.socket()
            s.settimeout(10)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", relay.port))
            others.append(s)
        # 127.0.0.2 is not exempt: 2 (half of 4 workers), and the third gets 421 at once.
        assert others[2].recv(200).startswith(b"421 4.7.0")
        for s in others:
            s.close()
    finally:
        for c in clients:
            c.close()
    out = subprocess.run(RUNNER + [BINARY, "-c", relay.conf_path, "--check"], capture_output=True, text=True)
    assert "connection_limit_exempt 127.0.0.1/32" in out.stdout, out.stdout


def test_check_prints_the_policy(sink, make_relay, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("ops: a@example.org\n")
    relay = make_relay(sink.port, allow_sender="*@*.example.net", aliases=str(aliases), rate_limit="none")
    out = subprocess.run(RUNNER + [BINARY, "-c", relay.conf_path, "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for line in ["allow_sender *@*.example.net", "qualify_domain relay.test", "max_recipients 100",
                 "max_messages_per_connection 1000", "rate_limit none", "# aliases: 1 name(s)"]:
        assert line in out.stdout.splitlines(), line
    for key, value, why in [("allow_sender", "a@*x.org", "bad address pattern"),
                            ("rate_limit", "10", "expected N/MINUTES"),
                            ("alias", "root", "expected NAME ADDRESS"),
                            ("max_recipients", "101", "from 1 to 100"),
                            ("allow_sender", "*@@example.com", "more than one @")]:
        conf = tmp_path / f"bad-{key}.conf"
        conf.write_text(f"smarthost 127.0.0.1:25\nspool {tmp_path}/s\n{key} {value}\n")
        out = subprocess.run(RUNNER + [BINARY, "-c", str(conf), "--check"], capture_output=True, text=True)
        assert out.returncode == 78 and why in out.stderr, (key, out.stderr)
    (tmp_path / "broken-aliases").write_text("root\n")
    conf = tmp_path / "bad-aliases.conf"
    conf.write_text(f"smarthost 127.0.0.1:25\nspool {tmp_path}/s\naliases {tmp_path}/broken-aliases\n")
    out = subprocess.run(RUNNER + [BINARY, "-c", str(conf), "--check"], capture_output=True, text=True)
    assert out.returncode == 78 and "broken-aliases:1:" in out.stderr
