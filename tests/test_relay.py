"""End-to-end tests: the real binary on loopback, real clients, a test upstream."""
import hashlib
import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from conftest import RELAYD, Client, Plan, Sink, free_port

RECEIVED = re.compile(
    rb"^Received: from (\S+) \(\[([^\]]+)\]\)\r\n\tby relay\.test \(smtp-relayd\) with (E?SMTP|UTF8SMTP) id ([0-9A-F]{23})"
    rb"(\r\n\tfor <[^>]+>)?; \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
)


def split_received(content):
    m = RECEIVED.match(content)
    assert m, f"no Received header at the top of {content[:300]!r}"
    return m, content[m.end():]


def test_smtplib_byte_for_byte(sink, relay):
    body = (
        b"From: cam1@example.net\r\nTo: ops@example.com\r\nSubject: motion\r\n\r\n"
        b".starts with a dot\r\n..two dots\r\n.\r\nlone dot above\r\n"
        b"8-bit: caf\xc3\xa9 \xff\xfe\r\n" + b"x" * 998 + b"\r\n"
    )
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        code, _ = s.ehlo("cam1.lan")
        assert code == 250
        assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("enhancedstatuscodes")
        assert s.has_extn("size") and s.esmtp_features["size"] == str(10 * 1024 * 1024)
        s.sendmail("cam1@example.net", ["ops@example.com"], body, mail_options=["BODY=8BITMIME"])
    [msg] = sink.wait_for(1)
    assert msg["sender"] == "cam1@example.net" and msg["rcpts"] == ["ops@example.com"]
    m, rest = split_received(msg["content"])
    assert m.group(1) == b"cam1.lan" and m.group(2) == b"127.0.0.1" and m.group(3) == b"ESMTP"
    assert m.group(5) == b"\r\n\tfor <ops@example.com>"
    assert rest == body
    # On the wire upstream: dot-stuffed, CRLF only.
    assert b"\r\n..starts with a dot\r\n...two dots\r\n..\r\n" in msg["wire"]
    assert re.search(rb"[^\r]\n|\r[^\n]", msg["wire"]) is None
    relay.wait_log(r"status=sent \(250 2\.0\.0 Ok: queued\)")
    relay.wait_log(r"removed \(delivered\)")
    assert relay.files("queue") == [] and relay.files("tmp") == []
    # The delivered message's file is kept for a later one, whole until a sync of queue/
    # makes its removal durable (a power cut before then brings it back as it was);
    # the next commit makes that sync, and the next removal empties the file.
    [size] = relay.pool_sizes()
    assert size > len(body)
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam1@example.net", ["ops@example.com"], b"Subject: 2\r\n\r\ntwo\r\n")
    relay.wait_log(r"removed \(delivered\)", count=2)
    assert sorted(relay.pool_sizes())[0] == 0
    # MAIL went upstream with BODY=8BITMIME and SIZE.
    mail = [c for c in sink.commands if c.startswith(b"MAIL")][0]
    assert b"BODY=8BITMIME" in mail and b"SIZE=" in mail


def test_curl_client(sink, relay, tmp_path):
    path = tmp_path / "mail.txt"
    path.write_bytes(b"Subject: from curl\r\n\r\nline one\r\n.dot line\r\n")
    r = subprocess.run(
        ["curl", "-sS", f"smtp://127.0.0.1:{relay.port}", "--mail-from", "a@example.net",
         "--mail-rcpt", "b@example.com", "--mail-rcpt", "c@example.com", "-T", str(path)],
        capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    [msg] = sink.wait_for(1)
    assert msg["rcpts"] == ["b@example.com", "c@example.com"]
    m, rest = split_received(msg["content"])
    assert m.group(5) is None, "no 'for' clause with two recipients"
    assert rest == b"Subject: from curl\r\n\r\nline one\r\n.dot line\r\n"


def test_pipelining_in_one_write(sink, relay, client_for):
    c = client_for(relay)
    assert c.greeting.startswith("220 relay.test ESMTP")
    c.send(b"EHLO pipe.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\n"
           b"RCPT TO:<bad address>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
    ehlo = c.reply()
    assert ehlo.startswith("250-relay.test\r\n") and "250 ENHANCEDSTATUSCODES" in ehlo
    assert c.codes(5) == ["250", "250", "501", "250", "354"]
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
    r = c.reply()
    assert re.match(r"250 2\.0\.0 Ok: queued as [0-9A-F]{23}\r\n", r), r
    assert c.codes(3) == ["250", "250", "354"]
    assert c.cmd(b"second\r\n.\r\n").startswith("250 2.0.0")
    assert c.cmd("QUIT").startswith("221 2.0.0")
    msgs = sink.wait_for(2)
    assert sorted(m["rcpts"] == ["b@example.com", "c@example.com"] for m in msgs) == [False, True]
    assert any(m["sender"] == "" and m["rcpts"] == ["d@example.com"] for m in msgs)


@pytest.mark.parametrize("commands,codes", [
    (["MAIL FROM:<a@b.c>"], ["503"]),
    (["EHLO x", "RCPT TO:<a@b.c>"], ["250", "503"]),
    (["EHLO x", "DATA"], ["250", "503"]),
    (["EHLO x", "MAIL FROM:<a@b.c>", "DATA"], ["250", "250", "503"]),
    (["EHLO x", "MAIL FROM:<a@b.c>", "MAIL FROM:<a@b.c>"], ["250", "250", "503"]),
    (["EHLO x", "MAIL FROM:<a@b.c> SIZE=999999999999"], ["250", "552"]),
    (["EHLO x", "MAIL FROM:<a@b.c> XFOO=1"], ["250", "555"]),
    (["EHLO x", "MAIL FROM:<a@b.c> BODY=8BITMIME", "RCPT TO:<Postmaster>"], ["250", "250", "250"]),
    (["EHLO x", "MAIL FROM:<not an address>"], ["250", "501"]),
    (["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<@x.org,@y.org:u@z.org>"], ["250", "250", "250"]),
    (["HELO x", "RSET", "NOOP", "VRFY root", "EXPN staff", "HELP"], ["250", "250", "250", "252", "502", "214"]),
    (["FROB", "STARTTLS", "DATA x"], ["500", "502", "501"]),
    (["EHLO", "HELO"], ["501", "501"]),
    (["NOOP " + "A" * 600, "NOOP"], ["500", "250"]),
])
def test_reply_codes(relay, client_for, commands, codes):
    c = client_for(relay)
    got = [c.cmd(cmd)[:3] for cmd in commands]
    assert got == codes
    # Every reply but the greeting and EHLO/HELO carries an enhanced code (RFC 2034).
    c.send(b"NOOP\r\n")
    assert re.match(r"250 2\.0\.0 ", c.reply())


def test_hundred_recipients_then_452(sink, relay, client_for):
    c = client_for(relay)
    c.cmd("EHLO x")
    c.cmd("MAIL FROM:<a@b.c>")
    c.send(b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(101)))
    codes = c.codes(101)
    assert codes[:100] == ["250"] * 100 and codes[100] == "452"
    assert c.cmd("DATA")[:3] == "354"
    assert c.cmd(b"x\r\n.\r\n")[:3] == "250"
    [msg] = sink.wait_for(1)
    assert len(msg["rcpts"]) == 100


def test_replies_never_echo_client_bytes(relay, client_for):
    c = client_for(relay)
    for junk in [b"\x1b[31mEVIL\x00\xff\r\n", b"<script>alert(1)</script>\r\n", b"MAIL FROM:<\x07@x>\r\n"]:
        r = c.cmd(junk)
        assert "EVIL" not in r and "script" not in r and "\x07" not in r
        assert r[:1] == "5"


def test_ten_mib_message(sink, make_relay):
    relay = make_relay(sink.port, max_message_size="20M").start()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.." * 12 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line) + 1)
    assert len(body) > 10 * 1024 * 1024
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as s:
        s.sendmail("a@b.c", ["big@example.com"], body)
    [msg] = sink.wait_for(1, timeout=60)
    _, rest = split_received(msg["content"])
    assert hashlib.sha256(rest).hexdigest() == hashlib.sha256(body).hexdigest()


def test_message_too_big_is_refused_after_data(sink, make_relay, client_for):
    relay = make_relay(sink.port, max_message_size="10K").start()
    c = client_for(relay)
    assert "250-SIZE 10240" in c.cmd("EHLO x")
    c.cmd("MAIL FROM:<a@b.c>")
    c.cmd("RCPT TO:<d@e.f>")
    assert c.cmd("DATA")[:3] == "354"
    c.send(b"y" * 900 + b"\r\n")
    for _ in range(20):
        c.send(b"z" * 900 + b"\r\n")
    r = c.cmd(b".\r\n")
    assert r.startswith("552 5.3.4"), r
    # The session goes on, and nothing was stored or relayed.
    assert c.cmd("NOOP")[:3] == "250"
    assert relay.files("queue") == [] and relay.files("tmp") == []
    relay.wait_log(r"reject: DATA from \[127\.0\.0\.1\]:\d+: 552 5\.3\.4")
    time.sleep(0.5)
    assert sink.messages == []


def test_upstream_down_then_back(make_relay, client_for):
    port = free_port()
    relay = make_relay(port).start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: retry me\r\n\r\nx\r\n")
    relay.wait_log(r"status=deferred \(451 4\.4\.1 cannot connect to smarthost")
    assert len(relay.files("queue")) == 1
    sink = Sink(port=port).start()
    try:
        [msg] = sink.wait_for(1, timeout=30)
        assert b"Subject: retry me" in msg["content"]
        relay.wait_log(r"status=sent")
        relay.wait_log(r"removed \(delivered\)")
        assert relay.files("queue") == []
    finally:
        sink.stop()


def test_451_then_250(make_relay):
    sink = Sink(plan=Plan(data_end=["451 4.3.0 try again later", "250 2.0.0 ok"])).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["d@e.f"], b"Subject: x\r\n\r\ny\r\n")
        [msg] = sink.wait_for(1, timeout=30)
        log = relay.wait_log(r"status=sent")
        assert re.search(r"status=deferred \(451 4\.3\.0 try again later\), next try in 1s", log)
        relay.wait_log(r"removed \(delivered\)")
        assert relay.files("queue") == [] and relay.files("failed") == []
    finally:
        sink.stop()


def test_550_goes_to_failed_area(make_relay):
    sink = Sink(plan=Plan(rcpt_default=["550 5.1.1 no such user"])).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["nobody@e.f"], b"Subject: x\r\n\r\ny\r\n")
        relay.wait_log(r"status=failed \(550 5\.1\.1 no such user\)")
        relay.wait_log(r"failed: 1 recipient\(s\) failed; moved to .*/failed/")
        # The sender's notice is refused too (the sink refuses everyone): it stays in
        # failed/ beside the message, and gets no notice of its own.
        relay.wait_log(r"a notice that failed gets no notice of its own")
        [failed] = [f for f in relay.files("failed") if f[17] != "F"]
        assert len(relay.files("failed")) == 2
        text = open(os.path.join(relay.spool, "failed", failed), "rb").read()
        assert b"\nF 0 " in text and b"550 5.1.1 no such user" in text and b"\nX " in text
        assert relay.files("queue") == []
        assert sink.messages == []
    finally:
        sink.stop()


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_spool_written_by_the_previous_version_is_delivered(sink, make_relay):
    # Two files as the previous release wrote them (sendmail, with the daemon
    # stopped), one with delivery records appended as its relay did: recipient 0
    # delivered, then a deferred attempt. The other has the L record of a long line.
    relay = make_relay(sink.port, hostname="old.example")
    os.makedirs(os.path.join(relay.spool, "queue"))
    src = os.path.join(FIXTURES, "spool-v1")
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f, \
                open(os.path.join(relay.spool, "queue", name), "wb") as g:
            g.write(f.read())
    relay.start()
    msgs = sorted(sink.wait_for(2, timeout=30), key=lambda m: m["rcpts"])
    assert [m["rcpts"] for m in msgs] == [["long@example.com"], ["pending@example.com"]], \
        "the recipient delivered before is not sent again"
    assert all(m["sender"] == "cam1@old.example" for m in msgs)
    long_msg, first = msgs
    assert first["content"].endswith(b"\r\nfirst line\r\n.dot line\r\n")
    assert b"Subject: written by the previous version\r\n" in first["content"]
    assert max(len(line) for line in long_msg["content"].split(b"\r\n")) <= 998
    assert b"Content-Transfer-Encoding: quoted-printable" in long_msg["content"]
    relay.wait_log(r"661BE699124E70000007966: to=<pending@example\.com>.*status=sent")
    # A file is removed after its status=sent line: wait for both removals.
    relay.wait_log(r"661BE699124E70000007966: removed \(delivered\)")
    relay.wait_log(r"661BE69939A6D0000007968: removed \(delivered\)")
    assert relay.files("queue") == []


def test_rust_log_filters_by_module(sink, make_relay, tmp_path):
    # env_logger's syntax: warnings everywhere, info for the relay thread alone.
    relay = make_relay(sink.port).start(env={"RUST_LOG": "warn,smtp_relayd::relay=info"})
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: filtered\r\n\r\nx\r\n")
    sink.wait_for(1)
    relay.wait_log(r"to=<d@e\.f>, relay=.*status=sent")
    log = relay.log()
    assert "connect from" not in log and "started:" not in log, log
    # A fatal error shows under any filter that names the crate.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "taken.conf"
        conf.write_text(f"listen 127.0.0.1:{port}\nsmarthost 127.0.0.1:9\nsmarthost_tls none\n"
                        f"spool {tmp_path / 'spool2'}\n")
        r = subprocess.run(RELAYD + ["-c", str(conf)], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, RUST_LOG="smtp_relayd::relay=debug"))
    assert r.returncode == 1
    assert f"fatal: cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr


def test_mixed_recipients_each_get_their_fate(make_relay):
    plan = Plan(rcpt={"later@x.org": ["450 4.2.1 mailbox busy", "250 2.1.5 ok"],
                      "never@x.org": ["550 5.1.1 unknown"]})
    sink = Sink(plan=plan).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["now@x.org", "later@x.org", "never@x.org"], b"Subject: m\r\n\r\nz\r\n")
        msgs = sink.wait_for(2, timeout=30)
        assert msgs[0]["rcpts"] == ["now@x.org"]
        assert msgs[1]["rcpts"] == ["later@x.org"], "the 4xx recipient is retried alone"
        relay.wait_log(r"moved to .*/failed/")
        assert len(relay.files("failed")) == 1 and relay.files("queue") == []
    finally:
        sink.stop()


def test_upstream_without_pipelining_or_ehlo(make_relay):
    sink = Sink(plan=Plan(helo_only=True)).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["r1@x.org", "r2@x.org"], b"Subject: old\r\n\r\n.dot\r\n")
        [msg] = sink.wait_for(1)
        assert msg["rcpts"] == ["r1@x.org", "r2@x.org"]
        assert msg["content"].endswith(b"Subject: old\r\n\r\n.dot\r\n")
        assert any(c.startswith(b"HELO relay.test") for c in sink.commands)
    finally:
        sink.stop()


def test_upstream_size_limit_fails_message(make_relay):
    sink = Sink(plan=Plan(ehlo=["250-sink", "250 SIZE 100"])).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["d@e.f"], b"Subject: big\r\n\r\n" + b"x" * 500 + b"\r\n")
        relay.wait_log(r"status=failed \(552 5\.3\.4 message size \d+ exceeds smarthost limit 100\)")
        relay.wait_log(r"moved to .*/failed/")
        # Its failure notice is over 100 octets too: it fails the same way, and stops.
        relay.wait_log(r"a notice that failed gets no notice of its own")
        assert len(relay.files("failed")) == 2
        assert not any(c.startswith(b"MAIL") for c in sink.commands)
    finally:
        sink.stop()


def test_connection_reuse_for_a_burst(sink, relay):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        for i in range(5):
            s.sendmail("a@b.c", ["d@e.f"], b"Subject: %d\r\n\r\nx\r\n" % i)
    sink.wait_for(5)
    assert sink.sessions <= 2, f"{sink.sessions} upstream sessions for 5 messages"
    # The idle connection is closed with QUIT.
    deadline = time.time() + 10
    while time.time() < deadline and not any(c.startswith(b"QUIT") for c in sink.commands):
        time.sleep(0.1)
    assert any(c.startswith(b"QUIT") for c in sink.commands)


def test_aiosmtpd_as_smarthost(make_relay):
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                             list(envelope.mail_options)))
            return "250 2.0.0 OK aiosmtpd"

    port = free_port()
    ctl = aiosmtpd.Controller(Handler(), hostname="127.0.0.1", port=port, decode_data=False)
    ctl.start()
    try:
        relay = make_relay(port).start()
        body = b"Subject: to aiosmtpd\r\n\r\n.dotted\r\n8bit \xe9\r\n"
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["x@y.z", "w@y.z"], body, mail_options=["BODY=8BITMIME"])
        relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\)", count=2)
        [(frm, tos, content, opts)] = received
        assert frm == "a@b.c" and tos == ["x@y.z", "w@y.z"]
        assert content.endswith(body)
        assert "BODY=8BITMIME" in opts
    finally:
        ctl.stop()


def test_smtputf8_carried_through(sink, relay):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        s.sendmail("jos\u00e9@example.net", ["m\u00fcller@example.de"], "Subject: \u00fc\r\n\r\nx\r\n".encode(),
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [msg] = sink.wait_for(1)
    assert msg["sender"] == "jos\u00e9@example.net" and msg["rcpts"] == ["m\u00fcller@example.de"]
    assert any(c.startswith(b"MAIL") and b"SMTPUTF8" in c for c in sink.commands)
    assert b"with UTF8SMTP id" in msg["content"]


def test_relay_denied_outside_allow(sink, make_relay, client_for):
    relay = make_relay(sink.port, allow="192.0.2.0/24").start()
    c = client_for(relay)
    c.cmd("EHLO x")
    assert c.cmd("MAIL FROM:<a@b.c>")[:3] == "250"
    assert c.cmd("RCPT TO:<victim@example.com>").startswith("554 5.7.1")
    assert c.cmd("DATA")[:3] == "503"
    relay.wait_log(r"reject: RCPT from \[127\.0\.0\.1\]: 554 5\.7\.1 Relay access denied; to=<victim@example\.com>")


def test_allow_none_allows_nobody(sink, make_relay, client_for):
    relay = make_relay(sink.port, allow="none").start()
    c = client_for(relay)
    c.cmd("EHLO x")
    c.cmd("MAIL FROM:<a@b.c>")
    assert c.cmd("RCPT TO:<d@e.f>").startswith("554 5.7.1")


SMUGGLING = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n"]


@pytest.mark.parametrize("seq", SMUGGLING, ids=[s.decode().replace("\r", "CR").replace("\n", "LF") for s in SMUGGLING])
@pytest.mark.parametrize("pipelined", [False, True])
def test_smuggling_yields_one_message(sink, relay, client_for, seq, pipelined):
    c = client_for(relay)
    smuggled = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nowned\r\n.\r\n")
    head = b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
    body = b"Subject: real\r\n\r\nhello" + seq + smuggled
    if pipelined:
        c.send(head)
        c.reply()
        assert c.codes(3) == ["250", "250", "354"]
        c.send(body + b"QUIT\r\n")
    else:
        for line in [b"EHLO x", b"MAIL FROM:<a@b.c>", b"RCPT TO:<d@e.f>", b"DATA"]:
            c.cmd(line + b"\r\n")
        c.send(body)
    # The smuggled end is the real end: exactly one message, holding all of it.
    r = c.reply()
    assert r.startswith("250 2.0.0 Ok: queued"), r
    [msg] = sink.wait_for(1)
    time.sleep(0.3)
    assert len(sink.messages) == 1
    assert msg["rcpts"] == ["d@e.f"]
    assert b"MAIL FROM:<evil@attacker.test>" in msg["content"]
    assert re.search(rb"[^\r]\n|\r[^\n]", msg["wire"]) is None, "a bare CR or LF reached the upstream"


def test_bare_newline_reject(sink, make_relay, client_for):
    relay = make_relay(sink.port, bare_newline="reject").start()
    c = client_for(relay)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    assert c.cmd(b"a\nb\r\n.\r\n").startswith("550 5.6.0")
    for line in ["MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    assert c.cmd(b"clean\r\n.\r\n").startswith("250 2.0.0")
    [msg] = sink.wait_for(1)
    assert msg["content"].endswith(b"\r\nclean\r\n")


def test_bare_newline_normalized(sink, relay, client_for):
    c = client_for(relay)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    assert c.cmd(b"Subject: lf\n\nline1\nline2\rline3\r\n.\r\n").startswith("250")
    [msg] = sink.wait_for(1)
    _, rest = split_received(msg["content"])
    assert rest == b"Subject: lf\r\n\r\nline1\r\nline2\r\nline3\r\n"


def test_mail_loop_refused(sink, relay, client_for):
    c = client_for(relay)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    # The default max_hops is 100 (RFC 5321 §6.3: at least 100): 101 is a loop, and
    # a message that crossed 31 to 100 hops (Postfix takes up to 50) goes on.
    hops = b"".join(b"Received: from hop%d by x; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i for i in range(101))
    assert c.cmd(hops + b"Subject: loop\r\n\r\nx\r\n.\r\n").startswith("554 5.4.6")
    for line in ["MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    assert c.cmd(hops[: hops.index(b"Received: from hop100")] + b"\r\nx\r\n.\r\n").startswith("250")


def test_idle_client_times_out(sink, make_relay, client_for):
    relay = make_relay(sink.port, command_timeout="1s").start()
    c = client_for(relay)
    c.cmd("EHLO x")
    c.sock.settimeout(10)
    assert c.reply().startswith("421 4.4.2")
    assert c.closed()
    relay.wait_log(r"timeout after command from \[127\.0\.0\.1\]")


def test_client_vanishing_mid_data_stores_nothing(sink, relay, client_for):
    c = client_for(relay)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    c.send(b"Subject: half\r\n\r\npartial")
    c.close()
    relay.wait_log(r"lost connection after DATA from \[127\.0\.0\.1\]")
    assert relay.files("queue") == [] and relay.files("tmp") == []


def test_pool_full_gets_421(sink, make_relay, client_for):
    relay = make_relay(sink.port, workers=1, max_connections=1).start()
    # The start-up probe's session must be over before the one allowed connection.
    relay.wait_log(r"disconnect from")
    first = client_for(relay)
    assert first.greeting.startswith("220")
    second = Client(relay.port)
    try:
        assert second.greeting.startswith("421 4.3.2"), second.greeting
        assert second.closed()
    finally:
        second.close()
    relay.wait_log(r"refused \[127\.0\.0\.1\]:\d+ with 421 4\.3\.2")
    # The first session is unaffected.
    assert first.cmd("NOOP")[:3] == "250"


def test_disk_full_gives_452_and_keeps_queued_mail(make_relay, small_tmpfs):
    spool = small_tmpfs("160k")
    port = free_port()  # upstream down: accepted mail stays queued
    relay = make_relay(port, spool=str(spool)).start()
    accepted, refused = [], []
    for i in range(40):
        c = Client(relay.port)
        try:
            for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>"]:
                c.cmd(line)
            r = c.cmd("DATA")
            if r.startswith("354"):
                r = c.cmd(b"Subject: %d\r\n\r\n" % i + b"z" * 78 + b"\r\n" + (b"z" * 78 + b"\r\n") * 250 + b".\r\n")
            (accepted if r.startswith("250") else refused).append(r)
        finally:
            c.close()
        if refused:
            break
    assert accepted, f"nothing was accepted: {refused}\n{relay.log()}"
    assert refused and refused[0].startswith("452 4.3.1"), refused
    # Everything that got a 250 is still in the queue, whole.
    relay.stop()
    assert len(os.listdir(spool / "queue")) == len(accepted)
    sink = Sink(port=port).start()
    try:
        relay.start()
        msgs = sink.wait_for(len(accepted), timeout=60)
        assert all(m["content"].endswith((b"z" * 78 + b"\r\n") * 251) for m in msgs)
    finally:
        relay.stop()
        sink.stop()


def test_corrupt_spool_file_moved_aside(sink, make_relay):
    relay = make_relay(sink.port)
    os.makedirs(os.path.join(relay.spool, "queue"))
    bad_id = "0000000000001000000FFFF"
    with open(os.path.join(relay.spool, "queue", bad_id), "wb") as f:
        f.write(b"\x00garbage\xff")
    relay.start()
    relay.wait_log(rf"{bad_id}: spool file is damaged .*moved to .*/corrupt/")
    assert relay.files("corrupt") == [bad_id] and relay.files("queue") == []
    # The daemon keeps serving.
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: after\r\n\r\nx\r\n")
    sink.wait_for(1)


def test_sigterm_keeps_queue_and_exits_zero(make_relay):
    port = free_port()
    relay = make_relay(port).start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: survive\r\n\r\nx\r\n")
    relay.wait_log(r"status=deferred")
    idle = Client(relay.port)
    idle.cmd("EHLO x")
    assert relay.stop(signal.SIGTERM) == 0
    # The idle session was told, not dropped.
    assert idle.reply().startswith("421 4.3.2")
    idle.close()
    log = relay.log()
    assert "shutting down" in log and re.search(r"relay: stopped; 1 message\(s\) stay queued", log)
    assert len(relay.files("queue")) == 1
    sink = Sink(port=port).start()
    try:
        relay.start()
        [msg] = sink.wait_for(1, timeout=30)
        assert b"Subject: survive" in msg["content"]
    finally:
        relay.stop()
        sink.stop()


def test_sigterm_lets_a_transaction_finish(sink, make_relay):
    relay = make_relay(sink.port, shutdown_grace="10s").start()
    c = Client(relay.port)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    c.send(b"Subject: in flight\r\n\r\n")
    relay.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert relay.proc.poll() is None, "exited while a transaction was in progress"
    assert c.cmd(b"rest\r\n.\r\n").startswith("250 2.0.0")
    c.close()
    assert relay.proc.wait(15) == 0
    assert len(relay.files("queue")) + len(sink.messages) == 1


def test_sighup_does_not_kill(relay):
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_log(r"SIGHUP received")
    assert relay.proc.poll() is None
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.noop()[0] == 250


def subject(msg):
    return msg["content"].split(b"Subject: ")[1].split(b"\r\n")[0].decode()


def send_until_stopped(relay, message, clients=4):
    """`clients` threads, client n sending message(n, i) = (marker, raw) for i = 0, 1, ...
    each on its own connection, until the returned event is set. Returns the markers
    that got a 250 (a list that grows), the event and the threads."""
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def sender(n):
        i = 0
        while not stop.is_set():
            marker, raw = message(n, i)
            try:
                with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as s:
                    s.sendmail("a@b.c", ["d@e.f"], raw)
                with lock:
                    acked.append(marker)
            except (smtplib.SMTPException, OSError):
                pass
            i += 1

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    return acked, stop, threads


def acked_but_not_delivered(sink, acked, timeout=60):
    """Waits until the sink has every acknowledged marker; returns those it never got."""
    deadline = time.time() + timeout
    while True:
        missing = set(acked) - {subject(m) for m in sink.messages}
        if not missing or time.time() > deadline:
            return missing
        time.sleep(0.2)


def test_kill9_while_clients_send_loses_nothing_acknowledged(make_relay):
    """Durability: every message that got a 250 reaches the upstream after a crash."""
    port = free_port()
    relay = make_relay(port, workers=4).start()

    def message(n, i):
        marker = f"client{n}-msg{i}"
        return marker, f"Subject: {marker}\r\n\r\n{('x' * 78 + chr(13) + chr(10)) * 25}".encode()

    acked, stop, threads = send_until_stopped(relay, message)
    deadline = time.time() + 20
    while len(acked) < 30 and time.time() < deadline:
        time.sleep(0.05)
    relay.kill9()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 30
    sink = Sink(port=port).start()
    try:
        relay.start()
        missing = acked_but_not_delivered(sink, acked)
        assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    finally:
        relay.stop()
        sink.stop()


def test_kill9_while_delivering_through_reused_spool_files(sink, make_relay):
    """The spool reuses the files of delivered messages. Killed while clients send and
    the relay delivers (so files move to the pool and back all the time), the restarted
    daemon still delivers every acknowledged message, each with exactly its own content:
    nothing of another message, no stale tail from a longer one that used the file before.
    One connection to the sink: with more the relay keeps up with the clients, and no
    acknowledged message would be waiting in queue/ at the kill."""
    relay = make_relay(sink.port, workers=4, smarthost_connections=1).start()

    def message(n, i):
        marker = f"client{n}-msg{i}"
        # Sizes vary, so a file reused by a shorter message would show a longer one's tail.
        body = "".join(f"{marker} {'y' * ((i * 37 + n) % 70)}\r\n" for _ in range(1 + (i * 13 + n) % 40))
        return marker, f"Subject: {marker}\r\n\r\n{body}".encode()

    acked, stop, threads = send_until_stopped(relay, message)
    # Killed once files have gone through the pool (40 delivered) while acknowledged
    # messages wait in queue/ (20 or more).
    deadline = time.time() + 30
    while (len(sink.messages) < 40 or len(relay.files("queue")) < 20) and time.time() < deadline:
        time.sleep(0.005)
    relay.kill9()
    stop.set()
    for t in threads:
        t.join()
    relay.start()
    missing = acked_but_not_delivered(sink, acked)
    queued = int(re.findall(r"relay: (\d+) message\(s\) in the queue at start", relay.log())[-1])
    assert queued >= 1
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    for m in sink.messages:
        n, i = (int(x) for x in re.match(r"client(\d+)-msg(\d+)$", subject(m)).groups())
        assert m["content"].startswith(b"Received: ") and m["content"].endswith(message(n, i)[1]), subject(m)
        assert m["content"].count(b"Subject: ") == 1, subject(m)
    relay.stop()


def test_check_prints_settings_and_bad_config_exits_78(tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text("smarthost mail.example.com:587\nlisten [::1]:2525\nallow 192.168.0.0/16\n")
    r = subprocess.run(RELAYD + ["-c", str(conf), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "smarthost mail.example.com:587" in r.stdout and "listen [::1]:2525" in r.stdout
    assert "allow 192.168.0.0/16" in r.stdout and "max_queue_lifetime 432000s" in r.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text("smarthost mail.example.com:587\n# fine\nmax_message_size lots\n")
    for extra in [["--check"], []]:
        r = subprocess.run(RELAYD + ["-c", str(bad)] + extra, capture_output=True, text=True)
        assert r.returncode == 78
        assert r.stderr.startswith(f"{bad}:3: 'lots' is not a size"), r.stderr
    r = subprocess.run(RELAYD + ["-c", str(tmp_path / "missing.conf")], capture_output=True, text=True)
    assert r.returncode == 78 and "cannot read" in r.stderr
    r = subprocess.run(RELAYD + ["--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("smtp-relayd ")
    r = subprocess.run(RELAYD + ["--bogus"], capture_output=True, text=True)
    assert r.returncode == 64


def test_check_catches_what_would_fail_at_start(tmp_path):
    """Each of these passed --check and then failed (or misbehaved) at start."""
    base = f"smarthost mail.example.com:587\nspool {tmp_path}/spool\n"
    secret = tmp_path / "pass"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    cases = [
        ("user no-such-user-here\n", 3, "user 'no-such-user-here' is not in /etc/passwd"),
        ("listen 127.0.0.1:2525\nlisten 127.0.0.1:2525\n", 4, "listen 127.0.0.1:2525 given twice (first on line 3)"),
        ("allow_sender *@@example.com\n", 3, "more than one @"),
        ("tls_cert /nonexistent.pem\ntls_key /nonexistent.key\n", 3, "/nonexistent.pem"),
    ]
    if os.geteuid() == 0:
        # A root-owned 0600 password file that user nobody could not read.
        cases.append((f"user nobody\nsmarthost_user u\nsmarthost_password_file {secret}\n", 5,
                      "user nobody (uid 65534) will not be able to read it"))
    for extra, line, why in cases:
        conf = tmp_path / "c.conf"
        conf.write_text(base + extra)
        r = subprocess.run(RELAYD + ["-c", str(conf), "--check"], capture_output=True, text=True)
        assert r.returncode == 78, (extra, r.stdout, r.stderr)
        assert r.stderr.startswith(f"{conf}:{line}: ") and why in r.stderr, (extra, r.stderr)


def test_queue_help_needs_no_config():
    r = subprocess.run(RELAYD + ["queue", "--help"], capture_output=True, text=True,
                       env=dict(os.environ, SMTP_RELAYD_CONFIG="/nonexistent.conf"))
    assert r.returncode == 0 and r.stdout.startswith("usage: smtp-relayd queue"), r


def test_listen_in_use_exits_1(sink, relay, make_relay):
    other = make_relay(sink.port, port=relay.port)
    other.start(wait=False)
    assert other.proc.wait(10) == 1
    assert re.search(r"fatal: cannot listen on 127\.0\.0\.1:\d+", other.log())


@pytest.mark.parametrize("plan,reason", [
    (Plan(greeting=["hang"]), r"451 4\.4\.2 timeout waiting for 127\.0\.0\.1:\d+"),
    (Plan(greeting=["this is not smtp"]), r"451 4\.5\.0 bad reply from 127\.0\.0\.1:\d+: not an SMTP reply"),
    (Plan(greeting=["close"]), r"451 4\.4\.2 connection closed by 127\.0\.0\.1:\d+"),
    (Plan(greeting=["554 5.7.1 go away"]), r"554 5\.7\.1 go away"),
    (Plan(mail=["421 4.3.2 shutting down"]), r"421 4\.3\.2 shutting down"),
    (Plan(data_end=["hang"]), r"451 4\.4\.2 timeout waiting for"),
    (Plan(ehlo=["250-sink"] + ["250-X%d" % i for i in range(200)] + ["250 OK"]), r"451 4\.5\.0 bad reply from 127\.0\.0\.1:\d+: reply has too many lines"),
])
def test_hostile_upstream_defers_and_keeps_mail(make_relay, plan, reason):
    """A smarthost that hangs, talks garbage, hangs up or refuses to talk: the message
    is deferred (never failed, never lost) with a clear reason."""
    sink = Sink(plan=plan).start()
    try:
        relay = make_relay(sink.port, smarthost_timeout="2s").start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["d@e.f"], b"Subject: hostile\r\n\r\nx\r\n")
        relay.wait_log(r"status=deferred \(" + reason, timeout=30)
        assert relay.files("failed") == []
        assert len(relay.files("queue")) == 1
        # The daemon still serves clients meanwhile.
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            assert s.noop()[0] == 250
    finally:
        sink.stop()


def write_spool_file(spool, msg_id, created, sender, rcpts, content):
    """A queue file in the documented format, as an earlier run would have left it."""
    os.makedirs(os.path.join(spool, "queue"), exist_ok=True)
    head = (f"smtp-relayd-spool 1\ncreated {created}\nclient 127.0.0.1\nhelo old\nbody 7bit\n"
            f"smtputf8 no\nsender <{sender}>\n" + "".join(f"rcpt <{r}>\n" for r in rcpts)
            + f"size {len(content):020d}\n\n").encode()
    with open(os.path.join(spool, "queue", msg_id), "wb") as f:
        f.write(head + content)


def test_old_message_is_still_tried_before_it_expires(sink, make_relay):
    relay = make_relay(sink.port, max_queue_lifetime="1d")
    ten_days_ago = int(time.time()) - 10 * 86400
    write_spool_file(relay.spool, "0000000000001000000ABCD", ten_days_ago, "a@b.c", ["d@e.f"],
                     b"Subject: from long ago\r\n\r\nx\r\n")
    relay.start()
    [msg] = sink.wait_for(1)
    assert msg["content"] == b"Subject: from long ago\r\n\r\nx\r\n"
    relay.wait_log(r"0000000000001000000ABCD: removed \(delivered\)")
    assert relay.files("failed") == []


def test_message_expires_after_max_queue_lifetime(make_relay):
    sink = Sink(plan=Plan(data_end=["451 4.3.0 not now"])).start()
    try:
        relay = make_relay(sink.port, max_queue_lifetime="2s").start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["d@e.f"], b"Subject: doomed\r\n\r\nx\r\n")
        relay.wait_log(r"failed: message expired after 2s; last error: 451 4\.3\.0 not now; moved to .*/failed/",
                       timeout=30)
        # Its notice expires the same way (2 s), and stops there.
        relay.wait_log(r"a notice that failed gets no notice of its own", timeout=30)
        [failed] = [f for f in relay.files("failed") if f[17] != "F"]
        text = open(os.path.join(relay.spool, "failed", failed), "rb").read()
        assert b"\nT " in text and b"\nX " in text
        assert relay.files("queue") == []
    finally:
        sink.stop()


def test_partial_delivery_survives_restart(make_relay):
    """A recipient delivered before a restart is not sent again after it."""
    plan = Plan(rcpt={"later@x.org": ["450 4.2.1 busy"]})
    sink = Sink(plan=plan).start()
    try:
        relay = make_relay(sink.port, retry_min="30s", retry_max="30s").start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["now@x.org", "later@x.org"], b"Subject: part\r\n\r\nx\r\n")
        relay.wait_log(r"to=<later@x\.org>.*status=deferred")
        assert relay.stop() == 0
        plan.rcpt["later@x.org"] = ["250 2.1.5 ok"]
        relay.start()
        msgs = sink.wait_for(2)
        assert [m["rcpts"] for m in msgs] == [["now@x.org"], ["later@x.org"]]
        relay.wait_log(r"removed \(delivered\)")
    finally:
        sink.stop()


def test_second_daemon_on_the_same_spool_refuses_to_start(sink, make_relay, tmp_path):
    first = make_relay(sink.port).start()
    control = os.path.join(first.spool, "control")
    before = os.stat(control).st_ino
    conf = open(first.conf_path).read().replace(f"127.0.0.1:{first.port}", f"127.0.0.1:{free_port()}")
    second_conf = tmp_path / "second.conf"
    second_conf.write_text(conf)
    t0 = time.monotonic()
    r = subprocess.run(RELAYD + ["-c", str(second_conf)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and time.monotonic() - t0 < 5, r
    assert f"spool {first.spool} is in use by another smtp-relayd (pid {first.proc.pid})" in r.stderr, r.stderr
    # It touched nothing: the first keeps its control socket and answers queue commands.
    assert os.stat(control).st_ino == before
    q = subprocess.run(RELAYD[:-1] + [RELAYD[-1], "queue", "-c", first.conf_path, "flush"],
                       capture_output=True, text=True, timeout=20)
    assert q.returncode == 0, q.stderr
    assert first.stop() == 0
    # A lock left by a daemon that died stops nobody.
    first.start()
    first.kill9()
    first.start()
    assert first.stop() == 0


def drip(sock, data, interval):
    """Sends `data` one octet every `interval` seconds until the server answers or
    closes; returns what it answered and how long that took."""
    t0 = time.monotonic()
    reply = b""
    for b in data:
        try:
            sock.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(interval)
        sock.setblocking(False)
        try:
            reply += sock.recv(200)
        except BlockingIOError:
            pass
        except OSError:
            break
        finally:
            sock.settimeout(10)
        if reply:
            break
    return reply, time.monotonic() - t0


def test_slow_drip_command_times_out_per_command(sink, make_relay):
    """One octet every 0.4 s kept a NOOP alive for ever under a per-read timeout."""
    relay = make_relay(sink.port, command_timeout="2s").start()
    c = Client(relay.port)
    c.cmd("EHLO x")
    reply, elapsed = drip(c.sock, b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP\r\n", 0.4)
    assert reply.startswith(b"421 4.4.2"), reply
    assert elapsed < 5, elapsed
    relay.wait_log(r"timeout after command from")


def test_slow_drip_data_is_bounded_by_min_data_rate(sink, make_relay):
    relay = make_relay(sink.port, data_timeout="2s").start()
    c = Client(relay.port)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    reply, elapsed = drip(c.sock, b"x" * 60, 0.3)
    # 500 octets a second is asked for: one every 0.3 s earns 2 ms, so the deadline
    # is data_timeout from the start, give or take the one second of slack.
    assert reply.startswith(b"421 4.4.2"), reply
    assert elapsed < 5, elapsed
    relay.wait_log(r"timeout after DATA from")
    assert relay.files("queue") == []


def test_declared_size_over_free_space_is_refused_at_mail(make_relay, small_tmpfs):
    spool = small_tmpfs("1m")
    relay = make_relay(free_port(), spool=str(spool)).start()
    c = Client(relay.port)
    c.cmd("EHLO x")
    r = c.cmd("MAIL FROM:<a@b.c> SIZE=5000000")
    assert r.startswith("452 4.3.1"), r
    assert c.cmd("RCPT TO:<d@e.f>").startswith("503")
    assert c.cmd("MAIL FROM:<a@b.c> SIZE=1000").startswith("250")
    relay.wait_log(r"reject: MAIL from \[127\.0\.0\.1\]: 452 4\.3\.1 not enough disk space for SIZE=5000000")


def test_log_delay_attempts_and_size_agree(make_relay, tmp_path):
    """delay= counts from arrival to the smarthost's answer; mailq counts an attempt
    that ended in a 5xx; the log's size= is the size mailq shows."""
    sink = Sink(plan=Plan(mail=["delay 2.5 550 5.1.1 no"])).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["d@e.f"], b"Subject: s\r\n\r\nx\r\n")
        log = relay.wait_log(r"status=failed")
        size = int(re.search(r"from=<a@b\.c>, to=<d@e\.f>, size=(\d+)", log).group(1))
        delay = int(re.search(r"delay=(\d+)s, status=failed", log).group(1))
        assert delay >= 2, log
        relay.wait_log(r"moved to .*/failed/")
        q = subprocess.run(RELAYD + ["queue", "-c", relay.conf_path, "list"], capture_output=True, text=True)
        assert "attempts=1 " in q.stdout, q.stdout
        assert re.search(rf"size={size}\s", q.stdout), (size, q.stdout)
    finally:
        sink.stop()
