"""The sendmail command and the queue tools, driven as scripts, cron and mail(1) do."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import BINARY, RUNNER, Plan, Sink, free_port, link_tools


@pytest.fixture
def tools(tmp_path):
    """Links named sendmail and mailq to the binary, as an install makes them."""
    return link_tools(str(tmp_path / "bin"))


def sendmail(tools, relay, args, stdin=b"", env=None):
    e = dict(os.environ, SMTP_RELAYD_CONFIG=relay.conf_path, **(env or {}))
    return subprocess.run([os.path.join(tools, "sendmail")] + args, input=stdin, capture_output=True, env=e, timeout=60)


def queue(relay, *args, tools=None):
    cmd = [os.path.join(tools, "mailq")] if tools else RUNNER + [BINARY, "queue", "-c", relay.conf_path]
    e = dict(os.environ, SMTP_RELAYD_CONFIG=relay.conf_path)
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=e, timeout=120)


MESSAGE = (b"To: ops@example.com\nCc: Carol <carol@example.com>\nBcc: hidden@example.com\n"
           b"Subject: disk almost full\n\nsda1 is at 97%\n.\nthe line above is a lone dot\n")


def test_sendmail_t_i_with_daemon_stopped_then_started(tools, make_relay):
    port = free_port()
    sink = Sink(port=port)
    relay = make_relay(port, hostname="box.lan", add_missing_headers=None)
    os.makedirs(relay.spool)
    r = sendmail(tools, relay, ["-t", "-i"], MESSAGE)
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(os.path.join(relay.spool, "queue"))) == 1
    sink.start()
    try:
        relay.start()
        [msg] = sink.wait_for(1)
        assert msg["sender"] == "root@box.lan"
        assert msg["rcpts"] == ["ops@example.com", "carol@example.com", "hidden@example.com"]
        content = msg["content"]
        assert b"Bcc" not in content and b"hidden@" not in content
        assert re.search(rb"\r\nDate: \w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n", content)
        assert re.search(rb"\r\nMessage-ID: <[0-9A-F]{23}@box\.lan>\r\n", content)
        assert re.search(rb"[^\r]\n", content) is None, "CRLF line endings only"
        assert content.endswith(b"\r\n\r\nsda1 is at 97%\r\n.\r\nthe line above is a lone dot\r\n")
        # On the wire the lone dot was stuffed.
        assert b"\r\n..\r\nthe line above" in msg["wire"]
    finally:
        sink.stop()


def test_sendmail_with_daemon_running_is_picked_up_at_once(tools, sink, make_relay):
    relay = make_relay(sink.port).start()
    start = time.time()
    r = sendmail(tools, relay, ["ops@example.com"], b"Subject: now\n\nx\n")
    assert r.returncode == 0, r.stderr
    [msg] = sink.wait_for(1, timeout=10)
    assert time.time() - start < 10, "woken by the control socket, not the 60 s rescan"
    # The daemon's log names it as it names a message from a client, with its size.
    qid = re.search(rb"id ([0-9A-F]{23})", msg["content"]).group(1).decode()
    relay.wait_log(rf"{qid}: from=<[^>]+>, to=<ops@example\.com>, size={len(msg['content'])}, nrcpt=1, "
                   rf"client=local uid=\d+\n")


@pytest.mark.parametrize("args,stdin,check", [
    (["-f", "cron@box.lan", "a@x.org"], b"Subject: f\n\nx\n", lambda m: m["sender"] == "cron@box.lan"),
    (["-fcron2@box.lan", "a@x.org"], b"Subject: f\n\nx\n", lambda m: m["sender"] == "cron2@box.lan"),
    (["-r", "watchdog@box.lan", "a@x.org"], b"Subject: r\n\nx\n", lambda m: m["sender"] == "watchdog@box.lan"),
    (["-f", "<>", "a@x.org"], b"Subject: null\n\nx\n", lambda m: m["sender"] == ""),
    (["-F", "Cron Daemon", "-f", "cron@box.lan", "a@x.org"], b"Subject: F\n\nx\n",
     lambda m: b"\r\nFrom: \"Cron Daemon\" <cron@box.lan>\r\n" in m["content"]),
    (["-oi", "a@x.org"], b"Subject: oi\n\nbefore\n.\nafter\n", lambda m: m["content"].endswith(b"before\r\n.\r\nafter\r\n")),
    (["-i", "a@x.org"], b"Subject: i\n\nbefore\n.\nafter\n", lambda m: m["content"].endswith(b"before\r\n.\r\nafter\r\n")),
    (["a@x.org"], b"Subject: dot\n\nbefore\n.\nafter\n", lambda m: m["content"].endswith(b"\r\n\r\nbefore\r\n")),
    (["-bm", "a@x.org"], b"Subject: bm\n\nx\n", lambda m: m["rcpts"] == ["a@x.org"]),
    (["-oem", "-odi", "-odb", "-oQ/var/spool/x", "-Ox=y", "-N", "never", "-R", "hdrs", "-B", "8BITMIME", "-U", "-em",
      "a@x.org"], b"Subject: ignored\n\nx\n", lambda m: m["rcpts"] == ["a@x.org"]),
    (["a@x.org, b@x.org", "root"], b"Subject: list\n\nx\n", lambda m: m["rcpts"] == ["a@x.org", "b@x.org", "root@relay.test"]),
    (["-t", "extra@x.org"], b"To: a@x.org\nSubject: t\n\nx\n", lambda m: m["rcpts"] == ["extra@x.org", "a@x.org"]),
])
def test_sendmail_flags(tools, sink, make_relay, args, stdin, check):
    relay = make_relay(sink.port).start()
    r = sendmail(tools, relay, args, stdin)
    assert r.returncode == 0, r.stderr
    [msg] = sink.wait_for(1)
    assert check(msg), msg


def test_sendmail_v_prints_the_queue_id(tools, sink, make_relay):
    relay = make_relay(sink.port).start()
    r = sendmail(tools, relay, ["-v", "a@x.org"], b"Subject: v\n\nx\n")
    assert r.returncode == 0 and re.match(rb"sendmail: queued as [0-9A-F]{23}\n", r.stdout), r


@pytest.mark.parametrize("args,stdin,code,text", [
    ([], b"Subject: nobody\n\nx\n", 64, b"no recipients"),
    (["-t"], b"Subject: nobody\n\nx\n", 64, b"no recipients"),
    (["-Z", "a@x.org"], b"", 64, b"unknown option -Z"),
    (["not an address"], b"x\n", 65, b"bad address"),
    (["-t"], b"To: broken address here\n\nx\n", 65, b"bad address"),
])
def test_sendmail_refusals(tools, sink, make_relay, args, stdin, code, text):
    relay = make_relay(sink.port).start()
    r = sendmail(tools, relay, args, stdin)
    assert r.returncode == code and text in r.stderr, r
    assert relay.files("queue") == [] and relay.files("tmp") == []


def test_read_only_spool_gives_73_and_queues_nothing(tools, make_relay, small_tmpfs):
    spool = small_tmpfs("1m")
    relay = make_relay(free_port(), spool=str(spool))
    for sub in ["tmp", "queue", "failed", "corrupt"]:
        os.makedirs(spool / sub)
    subprocess.run(["mount", "-o", "remount,ro", str(spool)], check=True)
    r = sendmail(tools, relay, ["a@x.org"], b"Subject: ro\n\nx\n")
    assert r.returncode in (73, 74), r
    assert b"cannot" in r.stderr and r.stderr.count(b"\n") == 1
    assert os.listdir(spool / "queue") == [] and os.listdir(spool / "tmp") == []


@pytest.mark.skipif(shutil.which("bsd-mailx") is None, reason="bsd-mailx is installed by .ci/run")
def test_mailx_through_our_sendmail(tools, sink, make_relay, tmp_path):
    relay = make_relay(sink.port).start()
    rc = tmp_path / "mailrc"
    rc.write_text(f"set sendmail={tools}/sendmail\n")
    e = dict(os.environ, MAILRC=str(rc), SMTP_RELAYD_CONFIG=relay.conf_path)
    r = subprocess.run(["bsd-mailx", "-s", "from mailx", "-c", "cc@x.org", "ops@x.org"], input=b"body from mailx\n",
                       capture_output=True, env=e, timeout=60)
    assert r.returncode == 0, r
    [msg] = sink.wait_for(1)
    assert sorted(msg["rcpts"]) == ["cc@x.org", "ops@x.org"]
    assert b"Subject: from mailx" in msg["content"] and b"body from mailx" in msg["content"]


def test_cron_style_subprocess_call(tools, sink, make_relay):
    """What cron does: sendmail -FCronDaemon -i -B8BITMIME -oem root, the job's output on stdin."""
    relay = make_relay(sink.port).start()
    body = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@box> /usr/local/bin/backup\n\nbackup failed: disk full\n"
    r = sendmail(tools, relay, ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], body)
    assert r.returncode == 0, r.stderr
    [msg] = sink.wait_for(1)
    assert msg["rcpts"] == ["root@relay.test"]
    assert b"backup failed: disk full\r\n" in msg["content"]


def test_sendmail_bs_speaks_smtp_on_stdio(tools, sink, make_relay):
    relay = make_relay(sink.port).start()
    session = (b"EHLO script\r\nMAIL FROM:<s@box.lan>\r\nRCPT TO:<a@x.org>\r\nDATA\r\n"
               b"Subject: bs\r\n\r\nover stdio\r\n.\r\nQUIT\r\n")
    r = sendmail(tools, relay, ["-bs"], session)
    assert r.returncode == 0, r
    out = r.stdout.decode()
    assert out.startswith("220 relay.test ESMTP") and "250 2.0.0 Ok: queued as" in out and "221 2.0.0" in out
    [msg] = sink.wait_for(1)
    assert msg["sender"] == "s@box.lan" and msg["content"].endswith(b"Subject: bs\r\n\r\nover stdio\r\n")


def test_sendmail_bs_offers_no_starttls_or_auth(tools, sink, make_relay, pki, tmp_path):
    # With a certificate and a users file configured, the daemon offers STARTTLS and
    # AUTH; on stdin there is no connection to secure, and the caller is local: neither
    # is offered, STARTTLS is refused, and the session goes on (it used to spin).
    users = tmp_path / "users"
    users.write_text("cam1:$6$salt$hash\n")
    users.chmod(0o600)
    relay = make_relay(sink.port, tls_cert=pki["cert"], tls_key=pki["key"], auth_users=str(users),
                       auth_plaintext="yes").start()
    session = (b"EHLO x\r\nSTARTTLS\r\nAUTH PLAIN AGNhbTEAeA==\r\nMAIL FROM:<s@box.lan>\r\n"
               b"RCPT TO:<a@x.org>\r\nDATA\r\nSubject: bs\r\n\r\nafter STARTTLS\r\n.\r\nQUIT\r\n")
    r = sendmail(tools, relay, ["-bs"], session)
    assert r.returncode == 0, r
    lines = r.stdout.decode().split("\r\n")
    ehlo = [line for line in lines if line.startswith("250-") or line.startswith("250 ")]
    assert ehlo and not any("STARTTLS" in line or "AUTH" in line for line in ehlo), lines
    codes = [line[:3] for line in lines if line]
    assert codes == ["220"] + ["250"] * 6 + ["502", "502", "250", "250", "354", "250", "221"], lines
    [msg] = sink.wait_for(1)
    assert msg["content"].endswith(b"after STARTTLS\r\n")


def queued_ids(relay):
    return relay.files("queue")


@pytest.mark.parametrize("running", [False, True])
def test_queue_tools(tools, make_relay, running):
    # The smarthost refuses for now: mail stays queued; one recipient fails for good.
    plan = Plan(rcpt={"bad@x.org": ["550 5.1.1 no such user"]}, data_end=["451 4.3.0 not now"])
    sink = Sink(plan=plan).start()
    try:
        # No failure notices: this counts the queue and failed/ (test_notices.py has them).
        relay = make_relay(sink.port, retry_min="1h", retry_max="1h", notify_failed="none")
        os.makedirs(relay.spool)
        for i in range(2):
            assert sendmail(tools, relay, ["a@x.org"], b"Subject: q%d\n\nx\n" % i).returncode == 0
        assert sendmail(tools, relay, ["bad@x.org"], b"Subject: doomed\n\nx\n").returncode == 0
        if running:
            relay.start()
            relay.wait_log(r"status=failed \(550", timeout=30)
            relay.wait_log(r"moved to .*/failed/", timeout=30)
            relay.wait_log(r"status=deferred", count=2, timeout=30)
        else:
            r = queue(relay, "flush")
            assert r.returncode == 0 and "no daemon running: delivery pass over 3 message(s) done" in r.stdout, r
        ids = queued_ids(relay)
        assert len(ids) == 2 and len(relay.files("failed")) == 1
        # list, as mailq and sendmail -bp
        for r in [queue(relay), queue(relay, tools=tools), subprocess.run(
                [os.path.join(tools, "sendmail"), "-bp"], capture_output=True, text=True,
                env=dict(os.environ, SMTP_RELAYD_CONFIG=relay.conf_path))]:
            assert r.returncode == 0, r
            assert r.stdout.count(" queued ") == 2 and r.stdout.count(" failed ") == 1, r.stdout
            assert 'last="451 4.3.0 not now"' in r.stdout and "attempts=1" in r.stdout and "next=in " in r.stdout
        # show
        r = queue(relay, "show", ids[0])
        assert r.returncode == 0 and "sender <root@relay.test>" in r.stdout and "Subject: q0" in r.stdout
        assert "T " in r.stdout
        # delete
        r = queue(relay, "delete", ids[0])
        assert r.returncode == 0 and f"deleted {ids[0]}" in r.stdout, r
        assert queued_ids(relay) == [ids[1]]
        assert queue(relay, "delete", ids[0]).returncode == 1
        # retry-failed: back in the queue, tried again (and refused again).
        failed = relay.files("failed")[0]
        if running:
            # The smarthost takes everything from now on; a running relay retries at once.
            sink.plan.rcpt["bad@x.org"] = ["250 2.1.5 ok"]
            sink.plan.data_end = ["250 2.0.0 ok"]
        r = queue(relay, "retry-failed", "all")
        assert r.returncode == 0 and "1 message(s) back in the queue" in r.stdout, r
        if not running:
            # sendmail -q is queue flush.
            r = sendmail(tools, relay, ["-q"])
            assert r.returncode == 0 and b"delivery pass over 2 message(s) done" in r.stdout, r
            assert len(relay.files("failed")) == 1, "refused again"
        else:
            r = queue(relay, "flush")
            assert r.returncode == 0 and "flushing" in r.stdout, r
            relay.wait_log(rf"{failed}: removed \(delivered\)", timeout=30)
            relay.wait_log(rf"{ids[1]}: removed \(delivered\)", timeout=30)
            assert queued_ids(relay) == [] and relay.files("failed") == []
    finally:
        sink.stop()


def test_delete_while_delivery_in_flight(tools, make_relay):
    """The delete waits for the delivery in flight; the message is then either
    delivered once, or deleted and never sent: never lost in between, never twice."""
    sink = Sink(plan=Plan(data_end=["delay 3 451 4.3.0 slow and refusing"])).start()
    try:
        relay = make_relay(sink.port, retry_min="1s", retry_max="1s").start()
        assert sendmail(tools, relay, ["a@x.org"], b"Subject: inflight\n\nx\n").returncode == 0
        id_ = queued_ids(relay)[0]
        time.sleep(1)  # the relay is now waiting for the slow reply
        start = time.time()
        r = queue(relay, "delete", id_)
        assert r.returncode == 0 and f"deleted {id_}" in r.stdout, r
        assert time.time() - start > 1, "the delete waited for the delivery in flight"
        time.sleep(3)
        assert queued_ids(relay) == [] and sink.messages == []
        assert len([c for c in sink.commands if c.startswith(b"MAIL")]) == 1, "not retried after the delete"
    finally:
        sink.stop()


def test_full_disk_gives_75_and_queues_nothing(tools, make_relay, small_tmpfs):
    spool = small_tmpfs("64k")
    relay = make_relay(free_port(), spool=str(spool))
    for sub in ["tmp", "queue", "failed", "corrupt"]:
        os.makedirs(spool / sub)
    fd = os.open(spool / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    r = sendmail(tools, relay, ["a@x.org"], b"Subject: full\n\n" + b"y" * 20000 + b"\n")
    assert r.returncode == 75, r
    assert r.stderr.count(b"\n") == 1
    assert os.listdir(spool / "queue") == [] and os.listdir(spool / "tmp") == []
