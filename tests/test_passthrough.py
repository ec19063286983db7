"""mode passthrough: no spool; the client's transaction goes through to the smarthost
as it happens, and the client gets the smarthost's replies (its own retry is the
durability)."""
import os
import re
import smtplib
import socket
import time

import pytest

from conftest import Client, Plan, Sink, free_port


@pytest.fixture
def passthrough(sink, make_relay):
    return make_relay(sink.port, mode="passthrough").start()


def transaction(c, data=True):
    """MAIL and RCPT (each answered 250 by the smarthost), then DATA (354)."""
    assert c.cmd("MAIL FROM:<a@example.net>").startswith("250")
    assert c.cmd("RCPT TO:<b@example.com>").startswith("250")
    if data:
        assert c.cmd("DATA").startswith("354")


def spool_is_empty(relay):
    for area in ("tmp", "queue", "failed", "corrupt"):
        assert relay.files(area) == [], area


def test_smtplib_gets_the_smarthost_replies(sink, passthrough):
    sink.plan.mail = ["250 2.1.0 sender fine here"]
    sink.plan.data_end = ["250 2.0.0 Ok: queued as SINK42"]
    body = b"Subject: alert\r\n\r\n.dot line\r\nmore\r\n"
    with smtplib.SMTP("127.0.0.1", passthrough.port) as s:
        s.ehlo("cam1.lan")
        assert s.mail("cam1@example.net") == (250, b"2.1.0 sender fine here")
        assert s.rcpt("ops@example.com")[0] == 250
        code, text = s.data(body)
        assert (code, text) == (250, b"2.0.0 Ok: queued as SINK42")
        # The sink had the message before the client heard 250: nothing was spooled.
        assert len(sink.messages) == 1
    [msg] = sink.messages
    assert msg["sender"] == "cam1@example.net" and msg["rcpts"] == ["ops@example.com"]
    assert msg["content"].startswith(b"Received: from cam1.lan ([127.0.0.1])\r\n\tby relay.test")
    assert msg["content"].endswith(b"\r\n\r\n" + body.split(b"\r\n\r\n", 1)[1])
    assert b"\r\n..dot line\r\n" in msg["wire"]
    log = passthrough.wait_log(r"status=sent \(250 2\.0\.0 Ok: queued as SINK42\), passthrough")
    assert "from=<cam1@example.net>, to=<ops@example.com>" in log
    assert re.search(r"started: .* workers, mode passthrough \(", log)
    spool_is_empty(passthrough)


def test_each_recipient_gets_its_own_answer(sink, passthrough):
    sink.plan.rcpt = {"gone@example.com": ["550 5.1.1 no such user"],
                      "later@example.com": ["450 4.2.1 mailbox busy"]}
    with smtplib.SMTP("127.0.0.1", passthrough.port) as s:
        s.ehlo("x")
        s.mail("a@example.net")
        assert s.rcpt("ok@example.com") == (250, b"2.1.5 ok")
        assert s.rcpt("gone@example.com") == (550, b"5.1.1 no such user")
        assert s.rcpt("later@example.com") == (450, b"4.2.1 mailbox busy")
        assert s.data(b"Subject: x\r\n\r\nhi\r\n")[0] == 250
    [msg] = sink.wait_for(1)
    assert msg["rcpts"] == ["ok@example.com"]
    passthrough.wait_log(r"reject: RCPT from \[127\.0\.0\.1\]: 550 5\.1\.1 no such user \(smarthost\); to=<gone@example\.com>")


@pytest.mark.parametrize("final", ["554 5.7.1 looks like spam", "452 4.3.1 upstream disk full"])
def test_the_final_refusal_reaches_the_client(sink, passthrough, final):
    sink.plan.data_end = [final]
    c = Client(passthrough.port)
    c.cmd("EHLO x")
    transaction(c)
    assert c.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n") == final + "\r\n"
    # The session goes on: the next transaction is accepted.
    sink.plan.data_end = ["250 2.0.0 fine"]
    transaction(c)
    assert c.cmd(b"Subject: y\r\n\r\nhi\r\n.\r\n") == "250 2.0.0 fine\r\n"
    passthrough.wait_log(rf"status=refused \({final}\), passthrough")
    spool_is_empty(passthrough)


def test_smarthost_down_is_a_temporary_failure_and_nothing_is_kept(make_relay):
    port = free_port()
    relay = make_relay(port, mode="passthrough").start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo("x")
        code, text = s.mail("a@example.net")
        assert code == 451 and text.startswith(b"4.4.0"), (code, text)
        # No smarthost address or system error goes to the client.
        assert b"127.0.0.1" not in text
    relay.wait_log(r"passthrough: cannot use 127\.0\.0\.1:\d+ \(connect\)")
    spool_is_empty(relay)
    # The client's retry is the durability: once the smarthost is up, it goes.
    up = Sink(port=port).start()
    try:
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@example.net", ["b@example.com"], b"Subject: retry\r\n\r\nhi\r\n")
        assert len(up.wait_for(1)) == 1
    finally:
        up.stop()


def test_a_client_that_vanishes_mid_data_sends_nothing(sink, passthrough):
    c = Client(passthrough.port)
    c.cmd("EHLO x")
    transaction(c)
    c.send(b"Subject: half\r\n\r\n" + b"x" * 100000 + b"\r\n")
    c.sock.close()
    passthrough.wait_log(r"lost connection after DATA")
    # The smarthost saw its connection close inside DATA: no end of data, no message.
    time.sleep(0.5)
    assert sink.messages == []
    # The next client gets a fresh connection and is delivered.
    with smtplib.SMTP("127.0.0.1", passthrough.port) as s:
        s.sendmail("a@example.net", ["b@example.com"], b"Subject: whole\r\n\r\nhi\r\n")
    [msg] = sink.wait_for(1)
    assert b"Subject: whole" in msg["content"]


def test_local_refusals_come_first_and_abandon_the_data(sink, make_relay):
    relay = make_relay(sink.port, mode="passthrough", max_message_size="20K",
                       allow_sender="*@example.net").start()
    c = Client(relay.port)
    c.cmd("EHLO x")
    assert c.cmd("MAIL FROM:<a@evil.test>").startswith("550 5.7.1")
    assert c.cmd("MAIL FROM:<a@example.net> SIZE=99999").startswith("552")
    mails_upstream = [x for x in sink.commands if x.startswith(b"MAIL")]
    assert mails_upstream == [], "refused here, never asked upstream"
    transaction(c)
    assert c.cmd(b"Subject: big\r\n\r\n" + (b"y" * 900 + b"\r\n") * 40 + b".\r\n").startswith("552 5.3.4")
    transaction(c)
    assert c.cmd(b"Subject: small\r\n\r\nhi\r\n.\r\n").startswith("250")
    c.cmd("QUIT")
    [msg] = sink.wait_for(1)
    assert b"Subject: small" in msg["content"]
    time.sleep(0.3)
    assert len(sink.messages) == 1, "the refused message never reached the smarthost"


def test_lost_smarthost_during_data(sink, passthrough):
    sink.plan.data_end = ["close"]
    c = Client(passthrough.port)
    c.cmd("EHLO x")
    transaction(c)
    r = c.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    assert r.startswith("451 4.4.2"), r
    spool_is_empty(passthrough)


def test_connection_is_kept_between_clients_then_closed_when_idle(sink, make_relay):
    # One worker, so that every client lands on the same smarthost connection.
    relay = make_relay(sink.port, mode="passthrough", workers=1, smarthost_idle="3s").start()
    for i in range(3):
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@example.net", ["b@example.com"], f"Subject: {i}\r\n\r\nhi\r\n".encode())
    sink.wait_for(3)
    assert sink.sessions == 1, "three clients, one smarthost connection"
    assert not any(c.startswith(b"QUIT") for c in sink.commands)
    deadline = time.time() + 15
    while time.time() < deadline and not any(c.startswith(b"QUIT") for c in sink.commands):
        time.sleep(0.1)
    assert sum(c.startswith(b"QUIT") for c in sink.commands) == 1, "the idle connection gets QUIT"


def test_rset_between_transactions_and_pipelining(sink, passthrough):
    c = Client(passthrough.port)
    c.cmd("EHLO x")
    transaction(c, data=False)
    assert c.cmd("RSET").startswith("250")
    # A pipelined batch: each reply in order, each from upstream.
    c.send(b"MAIL FROM:<c@example.net>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
    assert [c.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
    assert c.cmd(b"hi\r\n.\r\n").startswith("250")
    c.cmd("QUIT")
    [msg] = sink.wait_for(1)
    assert msg["sender"] == "c@example.net" and msg["rcpts"] == ["d@example.com"]
    assert any(x.startswith(b"RSET") for x in sink.commands), "the abandoned transaction was reset upstream"


def test_rewriting_applies_on_the_way_through(sink, make_relay):
    relay = make_relay(sink.port, mode="passthrough", rewrite_sender="alerts@example.com",
                       rewrite_from="alerts@example.com").start()
    body = b"From: Camera 1 <root@gw.lan>\r\nSubject: r\r\n\r\nFrom: not a header\r\n"
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("root@gw.lan", ["b@example.com"], body)
    [msg] = sink.wait_for(1)
    assert msg["sender"] == "alerts@example.com"
    assert b"\r\nFrom: Camera 1 <alerts@example.com>\r\n" in msg["content"]
    assert b"\r\nReply-To: Camera 1 <root@gw.lan>\r\n" in msg["content"]
    assert msg["content"].endswith(b"\r\n\r\nFrom: not a header\r\n")


def test_smtputf8_needs_a_smarthost_that_has_it(make_relay):
    plain = Sink(plan=Plan(ehlo=["250-sink.test", "250 PIPELINING"])).start()
    try:
        relay = make_relay(plain.port, mode="passthrough").start()
        c = Client(relay.port)
        c.cmd("EHLO x")
        r = c.cmd("MAIL FROM:<a@example.net> SMTPUTF8")
        assert r.startswith("553 5.6.7"), r
        assert c.cmd("MAIL FROM:<a@example.net>").startswith("250")
    finally:
        plain.stop()


def test_ipv6_client(sink, make_relay):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no ::1 here")
    port = free_port()
    relay = make_relay(sink.port, mode="passthrough", listen=f"[::1]:{port}", port=port, allow="::1/128")
    relay.start(wait=False)
    deadline = time.time() + 15
    while True:
        try:
            with smtplib.SMTP("::1", port) as s:
                s.sendmail("a@example.net", ["b@example.com"], b"Subject: v6\r\n\r\nhi\r\n")
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    [msg] = sink.wait_for(1)
    assert b"([IPv6:::1])" in msg["content"]


@pytest.mark.parametrize("where", ["mail", "data_end", "garbage"])
def test_a_hanging_or_babbling_smarthost_costs_a_temporary_failure(make_relay, where):
    """A smarthost that never answers (or answers garbage) gives the client a 4xx
    within smarthost_timeout, never a hang; a healthy one afterwards is used."""
    plan = Plan()
    if where == "mail":
        plan.mail = ["hang"]
    elif where == "data_end":
        plan.data_end = ["hang"]
    else:
        plan.mail = ["2xx this is not a reply"]
    bad = Sink(plan=plan).start()
    try:
        relay = make_relay(bad.port, mode="passthrough", smarthost_timeout="2s").start()
        c = Client(relay.port, timeout=30)
        c.cmd("EHLO x")
        t0 = time.time()
        if where == "data_end":
            transaction(c)
            r = c.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        else:
            r = c.cmd("MAIL FROM:<a@example.net>")
        assert r.startswith("451 4."), r
        assert time.time() - t0 < 10
        spool_is_empty(relay)
        # The session goes on; with the smarthost healthy again the next MAIL works.
        bad.plan.mail = ["250 2.1.0 ok"]
        bad.plan.data_end = ["250 2.0.0 fine"]
        transaction(c)
        assert c.cmd(b"Subject: y\r\n\r\nhi\r\n.\r\n") == "250 2.0.0 fine\r\n"
    finally:
        bad.stop()
