"""Several smarthosts: failover in order, routing by sender and recipient, deliveries
side by side, passthrough failover. Smarthosts are the scripted sink (tests/sink.py)
and aiosmtpd with STARTTLS and AUTH."""
import os
import re
import signal
import smtplib
import subprocess
import threading
import time

import pytest

from conftest import RELAYD, Plan, Sink, free_port, server_context


def blocks(*hosts, routes=()):
    """Named smarthost blocks: (name, port[, extra key lines]) each, then routes."""
    text = ""
    for h in hosts:
        name, port = h[0], h[1]
        text += f"smarthost {name} 127.0.0.1:{port}\n"
        for line in h[2:]:
            text += f"    {line}\n"
    for r in routes:
        text += f"route {r}\n"
    return text


def several(make_relay, *hosts, routes=(), **conf):
    return make_relay(None, smarthost=None, extra=blocks(*hosts, routes=routes), **conf)


def send(relay, rcpts=("ops@example.com",), sender="cam@example.net", subject="alert"):
    body = f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        s.sendmail(sender, list(rcpts), body)
    return body


def subjects(sink):
    return [re.search(rb"Subject: (\S+)", m["content"]).group(1).decode() for m in sink.messages]


@pytest.fixture
def sinks():
    made = []

    def make(plan=None):
        s = Sink(plan=plan).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_first_down_second_delivers_then_first_is_back(make_relay, sinks):
    """The first smarthost is a closed port: the second delivers, the log names it and
    the failover. Then the first comes back: once its backoff has passed, new mail goes
    to it again and the log says so."""
    a_port = free_port()
    b = sinks()
    relay = several(make_relay, ("a", a_port), ("b", b.port), retry_min="3s", retry_max="3s").start()
    send(relay, subject="one")
    b.wait_for(1)
    log = relay.wait_log(r"status=sent")
    assert re.search(r"to=<ops@example.com>, relay=b, delay=\d+s, status=sent", log), log
    assert "relay: failing over from a to b: 1 message(s)" in log
    assert re.search(r"cannot connect to smarthost a \(127\.0\.0\.1:\d+\)", log), log
    # While a is skipped, new mail goes straight to b: no second connection attempt.
    send(relay, subject="two")
    b.wait_for(2)
    assert relay.log().count("failing over from a to b") == 1, relay.log()
    # a comes back on its port.
    a = Sink(port=a_port).start()
    try:
        time.sleep(3.5)  # a's backoff (retry_min 3s) has passed
        send(relay, subject="three")
        a.wait_for(1)
        log = relay.wait_log(r"relay=a, delay=\d+s, status=sent")
        assert "relay: smarthost a works again (after 1 failure(s)" in log, log
        assert subjects(a) == ["three"] and subjects(b) == ["one", "two"]
    finally:
        a.stop()


def test_greeting_421_fails_over(make_relay, sinks):
    a = sinks(Plan(greeting=["421 4.3.2 too busy, come back later"]))
    b = sinks()
    relay = several(make_relay, ("a", a.port), ("b", b.port)).start()
    send(relay)
    b.wait_for(1)
    log = relay.wait_log(r"relay=b, delay=\d+s, status=sent")
    assert "421 4.3.2 too busy" in log and "failing over from a to b" in log
    assert a.messages == [] and a.sessions >= 1


def test_starttls_missing_fails_over(make_relay, sinks):
    """a must do STARTTLS and does not offer it: nothing is sent to a, b delivers."""
    a = sinks()
    b = sinks()
    relay = several(make_relay, ("a", a.port, "smarthost_tls starttls"), ("b", b.port)).start()
    send(relay)
    b.wait_for(1)
    log = relay.wait_log(r"relay=b, delay=\d+s, status=sent")
    assert "does not offer STARTTLS" in log and "failing over from a to b" in log
    assert a.messages == []
    assert not any(c.upper().startswith(b"MAIL") for c in a.commands)


aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from test_tls import Recorder  # noqa: E402  (aiosmtpd's handler; takes "s3cret pass")


def test_auth_refused_fails_over_to_aiosmtpd(make_relay, pki, tmp_path):
    """Two aiosmtpd smarthosts with STARTTLS and AUTH: a refuses our password (535), so
    b, with the right one, delivers. Each smarthost has its own credentials."""
    recs, ctls = [], []
    for _ in range(2):
        rec, port = Recorder(), free_port()
        ctl = aiosmtpd_controller.Controller(
            rec, hostname="127.0.0.1", port=port, authenticator=rec.authenticator, decode_data=False,
            tls_context=server_context(pki["cert"], pki["key"]), require_starttls=True, auth_require_tls=True)
        ctl.start()
        recs.append((rec, port))
        ctls.append(ctl)
    try:
        files = []
        for name, pw in (("a", "wrong"), ("b", "s3cret pass")):
            p = tmp_path / f"{name}.pass"
            p.write_text(pw + "\n")
            p.chmod(0o600)
            files.append(str(p))
        tls = ["smarthost_tls starttls", f"smarthost_ca_file {pki['ca']}", "smarthost_user relay@example.net"]
        relay = several(make_relay,
                        ("a", recs[0][1], *tls, f"smarthost_password_file {files[0]}"),
                        ("b", recs[1][1], *tls, f"smarthost_password_file {files[1]}")).start()
        send(relay)
        log = relay.wait_log(r"relay=b, delay=\d+s, status=sent \(250 2\.0\.0 OK aiosmtpd\)")
        assert re.search(r"error: relay: a refused our credentials \(535", log), log
        assert "failing over from a to b" in log
        assert recs[0][0].messages == [] and len(recs[1][0].messages) == 1
        assert [ok for _, _, ok in recs[0][0].logins] == [False]
        assert [ok for _, _, ok in recs[1][0].logins] == [True]
    finally:
        for c in ctls:
            c.stop()


def test_rcpt_5xx_fails_and_does_not_move(make_relay, sinks):
    """A 5xx to RCPT is the answer: that recipient failed, and it does not go to b. The
    other recipient is delivered by a, once."""
    a = sinks(Plan(rcpt={"gone@example.com": ["550 5.1.1 no such user"]}))
    b = sinks()
    relay = several(make_relay, ("a", a.port), ("b", b.port)).start()
    send(relay, rcpts=("gone@example.com", "ops@example.com"))
    log = relay.wait_log(r"failed: 1 recipient\(s\) failed; moved to")
    assert re.search(r"to=<gone@example.com>, relay=a, delay=\d+s, status=failed \(550 5\.1\.1", log), log
    assert re.search(r"to=<ops@example.com>, relay=a, delay=\d+s, status=sent", log), log
    # The sender's failure notice goes the same way (to a), after the message.
    relay.wait_log(r"failure notice [0-9A-F]+ queued for <cam@example.net>")
    a.wait_for(2)
    assert [m["rcpts"] for m in a.messages if m["sender"]] == [["ops@example.com"]]
    assert b.sessions == 0 and "failing over" not in log
    assert len(relay.files("failed")) == 1


def test_data_5xx_fails_without_failover(make_relay, sinks):
    a = sinks(Plan(data_end=["554 5.7.1 message refused"]))
    b = sinks()
    relay = several(make_relay, ("a", a.port), ("b", b.port)).start()
    send(relay)
    log = relay.wait_log(r"moved to .*failed/")
    assert re.search(r"relay=a, delay=\d+s, status=failed \(554 5\.7\.1", log), log
    assert b.sessions == 0


def test_routing_by_sender_and_recipient_with_a_split(make_relay, sinks):
    """Rules in order: recipients at b.test go via b; mail from cron@ goes via c; the
    rest via a. One message with recipients in two routes is split: each recipient
    is delivered once, by its own smarthost, and the file goes when both are done."""
    a, b, c = sinks(), sinks(), sinks()
    relay = several(make_relay, ("a", a.port), ("b", b.port), ("c", c.port),
                    routes=("b recipient *@b.test,*@*.b.test", "c sender cron@*", "a")).start()
    send(relay, rcpts=("x@a.test",), subject="plain")
    send(relay, rcpts=("y@b.test",), subject="tob")
    send(relay, rcpts=("z@a.test",), sender="cron@box.lan", subject="cron")
    send(relay, rcpts=("p@a.test", "q@sub.b.test", "r@a.test"), subject="split")
    send(relay, rcpts=("s@b.test",), sender="cron@box.lan", subject="cronb")
    relay.wait_log(r"removed \(delivered\)", count=5)
    got = {}
    for name, s in (("a", a), ("b", b), ("c", c)):
        for m in s.messages:
            subj = re.search(rb"Subject: (\S+)", m["content"]).group(1).decode()
            got.setdefault(subj, []).append((name, sorted(m["rcpts"])))
    assert got == {
        "plain": [("a", ["x@a.test"])],
        "tob": [("b", ["y@b.test"])],
        "cron": [("c", ["z@a.test"])],
        "split": [("a", ["p@a.test", "r@a.test"]), ("b", ["q@sub.b.test"])] if got["split"][0][0] == "a"
        else [("b", ["q@sub.b.test"]), ("a", ["p@a.test", "r@a.test"])],
        "cronb": [("b", ["s@b.test"])],
    }, got
    assert relay.files("queue") == []
    log = relay.log()
    assert re.search(r"to=<q@sub\.b\.test>, relay=b, .*status=sent", log)
    assert re.search(r"to=<p@a\.test>, relay=a, .*status=sent", log)


def test_split_message_one_route_defers_the_other_is_recorded(make_relay, sinks):
    """Split across routes, one route's smarthost is down: the other recipient is
    delivered and recorded, the message stays queued for the down one only, and after
    it comes back the pending recipient is delivered: nobody gets it twice."""
    a = sinks()
    b_port = free_port()
    relay = several(make_relay, ("a", a.port), ("b", b_port),
                    routes=("b recipient *@b.test", "a"), retry_min="1s", retry_max="1s").start()
    send(relay, rcpts=("p@a.test", "q@b.test"), subject="split")
    log = relay.wait_log(r"to=<q@b\.test>, relay=b, delay=\d+s, status=deferred")
    assert re.search(r"to=<p@a\.test>, relay=a, .*status=sent", log)
    assert len(relay.files("queue")) == 1
    listing = subprocess.run(RELAYD + ["queue", "-c", relay.conf_path, "list"],
                             capture_output=True, text=True, timeout=30).stdout
    assert "route=b " in listing and "relay=b " in listing and "<q@b.test>" in listing, listing
    assert "<p@a.test>" not in listing, listing
    b = Sink(port=b_port).start()
    try:
        b.wait_for(1, timeout=20)
        relay.wait_log(r"removed \(delivered\)")
        assert [m["rcpts"] for m in b.messages] == [["q@b.test"]]
        time.sleep(1.5)
        assert [m["rcpts"] for m in a.messages] == [["p@a.test"]]
    finally:
        b.stop()


def test_hanging_smarthost_does_not_stall_another_route(make_relay, sinks):
    """a accepts the connection and never greets. Mail for b's route is delivered at
    once, long before a's timeout; a's message fails over to b when it times out."""
    a = sinks(Plan(greeting=["hang"]))
    b = sinks()
    relay = several(make_relay, ("a", a.port, "smarthost_timeout 8s"), ("b", b.port),
                    routes=("b recipient *@b.test", "a,b")).start()
    send(relay, rcpts=("x@a.test",), subject="stuck")
    relay.wait_log(r"from=<cam@example.net>, to=<x@a.test>")
    t0 = time.time()
    send(relay, rcpts=("y@b.test",), subject="free")
    b.wait_for(1, timeout=6)
    took = time.time() - t0
    assert subjects(b) == ["free"]
    assert "status=deferred" not in relay.log() and "failing over" not in relay.log()
    # a's timeout passes: its message goes to b, the next of its route.
    b.wait_for(2, timeout=20)
    log = relay.wait_log(r"failing over from a to b")
    assert "timeout waiting for a" in log, log
    assert subjects(b) == ["free", "stuck"]
    assert took < 6


def test_slow_smarthost_takes_messages_side_by_side(make_relay, sinks):
    """A smarthost that takes 2 s per message, smarthost_connections 4: 20 messages go
    over 4 connections at once. The concurrency is checked at the sink; the time is
    printed (the ratio to 40 s is the figure; make bench measures it unloaded)."""
    a = sinks(Plan(data_end=["delay 2 250 2.0.0 queued slowly"]))
    relay = several(make_relay, ("a", a.port, "smarthost_connections 4", "smarthost_idle 5s")).start()
    t0 = time.time()
    for i in range(20):
        send(relay, subject=f"m{i}")
    a.wait_for(20, timeout=60)
    took = time.time() - t0
    print(f"20 messages at 2 s each over 4 connections: {took:.1f} s (one connection: 40 s)")
    assert a.max_active == 4, a.max_active
    assert sorted(subjects(a)) == sorted(f"m{i}" for i in range(20))
    # 4 connections reused, not one per message.
    assert a.sessions == 4, a.sessions
    assert took < 30, took


def test_kill9_while_two_routes_deliver_loses_nothing(make_relay, sinks):
    """Two routes, each smarthost slow (1 s per message), 12 messages acknowledged,
    then kill -9 in the middle of deliveries. After the restart, every acknowledged
    message has arrived at its route's smarthost (at least once: a kill between the
    smarthost's 250 and the record may repeat one)."""
    a = sinks(Plan(data_end=["delay 1 250 2.0.0 ok a"]))
    b = sinks(Plan(data_end=["delay 1 250 2.0.0 ok b"]))
    hosts = (("a", a.port, "smarthost_connections 2"), ("b", b.port, "smarthost_connections 2"))
    relay = several(make_relay, *hosts, routes=("b recipient *@b.test", "a")).start()
    sent = {"a": set(), "b": set()}
    for i in range(12):
        route = "b" if i % 2 else "a"
        send(relay, rcpts=(f"u{i}@{route}.test",), subject=f"k{i}")
        sent[route].add(f"k{i}")
    a.wait_for(1, timeout=20)
    relay.kill9()
    delivered_before = len(a.messages) + len(b.messages)
    assert delivered_before < 12, "kill came too late to test anything"
    relay.start()
    a.wait_for(len(sent["a"]), timeout=60)
    b.wait_for(len(sent["b"]), timeout=60)
    deadline = time.time() + 30
    while relay.files("queue") and time.time() < deadline:
        time.sleep(0.2)
    assert set(subjects(a)) == sent["a"] and set(subjects(b)) == sent["b"]
    assert relay.files("queue") == []
    print(f"kill -9 after {delivered_before} of 12 delivered; all 12 arrived after the restart")


def test_passthrough_fails_over_before_the_client_hears(make_relay, sinks):
    """Passthrough: a is down, so the session's MAIL goes to b, and the client gets b's
    own 250 after DATA; nothing is spooled."""
    b = sinks(Plan(data_end=["250 2.0.0 Ok: queued at b"]))
    relay = several(make_relay, ("a", free_port()), ("b", b.port), mode="passthrough").start()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        s.ehlo("dev")
        s.mail("cam@example.net")
        s.rcpt("ops@example.com")
        code, text = s.data(b"Subject: pass\r\n\r\nthrough\r\n")
    assert code == 250 and b"queued at b" in text
    log = relay.wait_log(r"status=sent .*passthrough")
    assert "passthrough: failing over from a to b" in log
    assert re.search(r"relay=b, delay=\d+s, status=sent \(250 2\.0\.0 Ok: queued at b\), passthrough", log)
    assert len(b.messages) == 1 and relay.files("queue") == []


def test_passthrough_all_down_gets_451(make_relay):
    relay = several(make_relay, ("a", free_port()), ("b", free_port()), mode="passthrough").start()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        s.ehlo("dev")
        code, text = s.mail("cam@example.net")
    assert code == 451 and b"4.4.0" in text
    log = relay.log()
    assert "cannot use a" in log and "cannot use b" in log


def test_check_prints_blocks_that_parse_back(make_relay, sinks, tmp_path):
    """--check prints each smarthost as a block with every key, and the routes; that
    output is a config that gives the same output."""
    a, b = sinks(), sinks()
    relay = several(make_relay, ("a", a.port, "smarthost_connections 3"), ("b", b.port, "smarthost_idle 9s"),
                    routes=("b sender cron@*",))
    out = subprocess.run(RELAYD + ["-c", relay.conf_path, "--check"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"smarthost a 127.0.0.1:{a.port}\n    smarthost_connections 3\n" in text, text
    assert f"smarthost b 127.0.0.1:{b.port}\n    smarthost_connections 2\n" in text, text
    assert "    smarthost_idle 9s\n" in text and "    smarthost_idle 1s\n" in text
    assert "route b sender cron@*\n" in text
    assert "# route (the default, no route line for it): a,b" in text
    again = tmp_path / "again.conf"
    again.write_text(text)
    out2 = subprocess.run(RELAYD + ["-c", str(again), "--check"], capture_output=True, text=True, timeout=30)
    assert out2.returncode == 0, out2.stderr
    strip = lambda t: t.split("\n", 1)[1]  # noqa: E731  (the first line names the file)
    assert strip(out2.stdout) == strip(text)


@pytest.mark.parametrize("extra,want", [
    ("smarthost a 127.0.0.1:1\nsmarthost a 127.0.0.1:2\n", ":2: smarthost 'a' given twice (first on line 1)"),
    ("smarthost 127.0.0.1:1\nsmarthost a 127.0.0.1:2\n", ":2: the smarthost on line 1 has no name"),
    ("smarthost a 127.0.0.1:1\nroute c\n", ":2: route: no smarthost named 'c' (there are: a)"),
    ("smarthost a 127.0.0.1:1\nroute a\nroute a sender x@y\n", ":3: this route is never used"),
    ("smarthost a 127.0.0.1:1\n    smarthost_idle 1s\n    smarthost_idle 2s\n", ":3: 'smarthost_idle' given again"),
    ("smarthost a 127.0.0.1:1\nroute a recipient nope\n", ":2: bad address pattern 'nope'"),
    ("smarthost a 127.0.0.1:1\nroute a,a\n", ":2: route: 'a' given twice"),
    ("smarthost a:b 127.0.0.1:1\n", ":1: smarthost name 'a:b'"),
    ("smarthost a 127.0.0.1:1\n    smarthost_user u\n", ":2: smarthost_user needs smarthost_password_file"),
    ("mode passthrough\nsmarthost a 127.0.0.1:1\nroute a recipient *@x.test\n", ":3: with mode passthrough"),
])
def test_config_errors_name_the_line(tmp_path, extra, want):
    conf = tmp_path / "c.conf"
    conf.write_text(extra)
    out = subprocess.run(RELAYD + ["-c", str(conf), "--check"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 78, out
    assert f"{conf}{want}" in out.stderr, out.stderr


def test_oauth_token_names_the_smarthost(tmp_path):
    """`oauth token` with two smarthosts using OAuth2: without a name it says which to
    choose (exit 78); with one, it gets that smarthost's token (here from its token
    command, which prints the smarthost's own token)."""
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"spool {tmp_path}/spool\n"
        "smarthost a 127.0.0.1:1\n    smarthost_auth xoauth2\n    smarthost_user a@example.com\n"
        "    smarthost_oauth_token_command /bin/echo token-a\n"
        "smarthost b 127.0.0.1:2\n    smarthost_auth xoauth2\n    smarthost_user b@example.com\n"
        "    smarthost_oauth_token_command /bin/echo token-b\n")
    run = lambda *a: subprocess.run(RELAYD + ["oauth", "-c", str(conf), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=30)
    r = run("token")
    assert r.returncode == 78 and "several smarthosts use OAuth2 (a, b): name one" in r.stderr, r
    r = run("token", "b")
    assert r.returncode == 0 and "OK: got an access token for b@example.com" in r.stdout, r
    r = run("token", "c")
    assert r.returncode == 78 and "no smarthost named 'c' (there are: a, b)" in r.stderr, r
