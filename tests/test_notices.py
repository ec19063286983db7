"""Failure notices and delay warnings (RFC 3464), delivered through the smarthost
like any mail and parsed back with Python's email package."""
import email
import email.policy
import os
import re
import smtplib
import time

from conftest import Plan, Sink


def parse(msg):
    return email.message_from_bytes(msg["content"], policy=email.policy.default)


def report(m):
    """The three parts of a multipart/report: text, status fields, original headers."""
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    parts = list(m.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    # The email package reads message/delivery-status as a list of header blocks:
    # the per-message fields, then one block per recipient.
    blocks = parts[1].get_payload()
    headers = parts[2].get_payload(decode=True) or parts[2].get_content().encode()
    return parts[0].get_content(), blocks[0], blocks[1:], headers


def send(relay, sender, rcpts, body=b"Subject: camera 7 offline\r\nFrom: cam7@lan\r\n\r\nbody\r\n"):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail(sender, rcpts, body)


def notices_queued(relay):
    return re.findall(r"(failure notice|delay warning) [0-9A-F]{23} queued for", relay.log())


def test_5xx_gives_one_notice_at_notify_failed(make_relay):
    sink = Sink(plan=Plan(rcpt={"nobody@x.org": ["550 5.1.1 <nobody@x.org>: no such user"]})).start()
    try:
        relay = make_relay(sink.port, notify_failed="ops@example.com").start()
        send(relay, "cam7@example.net", ["nobody@x.org", "ok@x.org"])
        msgs = sink.wait_for(2)
        relay.wait_log(r"failure notice [0-9A-F]{23} queued for <ops@example.com>")
        relay.wait_log(r"removed \(delivered\)")
        by_rcpt = {tuple(m["rcpts"]): m for m in msgs}
        assert set(by_rcpt) == {("ok@x.org",), ("ops@example.com",)}
        n = by_rcpt[("ops@example.com",)]
        assert n["sender"] == "", "a notice has the null sender"
        m = parse(n)
        assert m["Auto-Submitted"] == "auto-replied"
        assert m["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.test"
        assert m["Subject"] == "Undelivered Mail Returned to Sender"
        text, per_msg, rcpts, headers = report(m)
        assert "nobody@x.org" in text and "no such user" in text
        assert per_msg["Reporting-MTA"] == "dns; relay.test"
        [r] = rcpts
        assert r["Final-Recipient"] == "rfc822; nobody@x.org"
        assert r["Action"] == "failed" and r["Status"] == "5.1.1"
        assert r["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@x.org>: no such user"
        assert r["Remote-MTA"] == "dns; 127.0.0.1"
        assert b"Subject: camera 7 offline\r\n" in headers and b"From: cam7@lan\r\n" in headers
        assert headers.startswith(b"Received: from "), "the original's headers, as spooled"
        assert b"body" not in headers, "headers only, not the body"
        # The failed message stays in failed/ with its notice recorded; one notice only.
        [failed] = relay.files("failed")
        text = open(os.path.join(relay.spool, "failed", failed), "rb").read()
        assert re.search(rb"\nO \d+\t\n", text) and re.search(rb"\nN \d+ [0-9A-F]{23}\t\n", text)
        time.sleep(2)
        assert len(notices_queued(relay)) == 1 and len(sink.messages) == 2
    finally:
        sink.stop()


def test_notice_goes_to_the_sender_without_notify_failed(make_relay):
    sink = Sink(plan=Plan(rcpt={"nobody@x.org": ["554 5.7.1 rejected"]})).start()
    try:
        relay = make_relay(sink.port).start()
        send(relay, "cam7@example.net", ["nobody@x.org"])
        [n] = sink.wait_for(1)
        assert n["rcpts"] == ["cam7@example.net"] and n["sender"] == ""
        _, _, [r], _ = report(parse(n))
        assert r["Status"] == "5.7.1"
    finally:
        sink.stop()


def test_notice_to_a_local_name_follows_the_aliases(make_relay):
    sink = Sink(plan=Plan(rcpt={"nobody@x.org": ["550 5.1.1 unknown"]})).start()
    try:
        relay = make_relay(sink.port, notify_failed="root", alias="root admin@example.com",
                           notify_from="relay@example.com").start()
        send(relay, "cam7@example.net", ["nobody@x.org"])
        [n] = sink.wait_for(1)
        assert n["rcpts"] == ["admin@example.com"]
        assert n["sender"] == "relay@example.com", "notify_from is the notice's sender"
        assert parse(n)["From"].addresses[0].addr_spec == "relay@example.com"
    finally:
        sink.stop()


def test_expiry_gives_a_notice(make_relay):
    sink = Sink(plan=Plan(rcpt={"later@x.org": ["451 4.2.1 mailbox busy"]})).start()
    try:
        relay = make_relay(sink.port, max_queue_lifetime="3s", retry_min="1s", retry_max="1s").start()
        send(relay, "cam7@example.net", ["later@x.org"])
        relay.wait_log(r"failed: message expired after 3s; last error: 451 4\.2\.1 mailbox busy", timeout=30)
        [n] = sink.wait_for(1)
        assert n["rcpts"] == ["cam7@example.net"]
        text, _, [r], _ = report(parse(n))
        assert r["Final-Recipient"] == "rfc822; later@x.org"
        assert r["Action"] == "failed" and r["Status"] == "4.2.1"
        assert "not delivered in time" in text
    finally:
        sink.stop()


def test_null_sender_gets_no_notice(make_relay):
    sink = Sink(plan=Plan(rcpt_default=["550 5.1.1 unknown"])).start()
    try:
        relay = make_relay(sink.port, notify_failed="ops@example.com").start()
        send(relay, "", ["nobody@x.org"])
        relay.wait_log(r"moved to .*/failed/")
        time.sleep(2)
        assert notices_queued(relay) == [] and len(relay.files("failed")) == 1
        assert sum(c.startswith(b"RCPT") for c in sink.commands) == 1
    finally:
        sink.stop()


def test_a_notice_that_fails_gets_no_second_notice(make_relay):
    # Every recipient is refused, the notice's too.
    sink = Sink(plan=Plan(rcpt_default=["550 5.1.1 unknown"])).start()
    try:
        relay = make_relay(sink.port, notify_failed="ops@example.com").start()
        send(relay, "cam7@example.net", ["nobody@x.org"])
        relay.wait_log(r"a notice that failed gets no notice of its own")
        time.sleep(3)
        assert len(notices_queued(relay)) == 1
        assert len(relay.files("failed")) == 2, "the original and its notice, nothing more"
        assert relay.files("queue") == []
        assert sum(c.startswith(b"RCPT") for c in sink.commands) == 2
        assert sink.messages == []
    finally:
        sink.stop()


def test_delay_warning_once(make_relay):
    sink = Sink(plan=Plan(rcpt={"later@x.org": ["451 4.4.1 no answer from host"]})).start()
    try:
        relay = make_relay(sink.port, delay_warning="2s", retry_min="1s", retry_max="1s",
                           notify_failed="ops@example.com").start()
        send(relay, "cam7@example.net", ["later@x.org"])
        [n] = sink.wait_for(1, timeout=30)
        assert n["rcpts"] == ["ops@example.com"]
        m = parse(n)
        assert m["Subject"] == "Delayed Mail (still being retried)"
        text, _, [r], _ = report(m)
        assert r["Action"] == "delayed" and r["Status"] == "4.4.1"
        assert r["Will-Retry-Until"]
        assert "WARNING ONLY" in text
        # More deferrals: no second warning; the message stays queued.
        relay.wait_log(r"status=deferred", count=5, timeout=30)
        assert len(notices_queued(relay)) == 1 and len(sink.messages) == 1
        assert len(relay.files("queue")) == 1
    finally:
        sink.stop()


def test_notice_owed_at_a_crash_is_sent_once_at_start(make_relay):
    """The records as a crash leaves them: `O` written and the message in failed/, the
    notice not yet queued (or queued, its `N` not yet written)."""
    sink = Sink(plan=Plan(rcpt={"nobody@x.org": ["550 5.1.1 unknown"]})).start()
    try:
        relay = make_relay(sink.port, notify_failed="ops@example.com").start()
        send(relay, "cam7@example.net", ["nobody@x.org"])
        sink.wait_for(1)
        relay.wait_log(r"removed \(delivered\)")
        relay.stop()
        [failed] = relay.files("failed")
        path = os.path.join(relay.spool, "failed", failed)
        with open(path, "rb") as f:
            text = f.read()
        cut = re.sub(rb"N \d+ [0-9A-F]{23}\t\n", b"", text)
        assert cut != text
        with open(path, "wb") as f:
            f.write(cut)
        relay.start()
        relay.wait_log(r"failure notice [0-9A-F]{23} queued for", count=2)
        sink.wait_for(2)
        relay.stop()

        # Now the notice is in the spool but its N record is missing: no second one.
        with open(path, "wb") as f:
            f.write(cut)
        notice = failed[:17] + "F1" + failed[19:]
        # (A copy in failed/ stands for it: it is found there as in queue/.)
        with open(os.path.join(relay.spool, "failed", notice), "wb") as f:
            f.write(cut)
        relay.start()
        relay.wait_log(r"failure notice [0-9A-F]{23} was already queued")
        time.sleep(1)
        assert len(re.findall(r"failure notice [0-9A-F]{23} queued for", relay.log())) == 2
    finally:
        sink.stop()
