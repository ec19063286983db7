"""What the relay does to a message's content on its way: lines over 998 octets are
re-encoded (or, as the last resort, folded) so that a strict smarthost takes them, and
a message without Date or Message-ID gets them. aiosmtpd is the strict smarthost: it
answers `500 Line too long` to a line over 1000 octets."""
import email
import email.policy
import re
import smtplib

import pytest

from conftest import Client, free_port
from test_sendmail import sendmail, tools  # noqa: F401 (a fixture)


@pytest.fixture
def strict():
    """aiosmtpd on loopback; `.received` holds (sender, recipients, content)."""
    controller = pytest.importorskip("aiosmtpd.controller")

    class Handler:
        received = []

        async def handle_DATA(self, server, session, envelope):
            Handler.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            return "250 2.0.0 OK aiosmtpd"

    port = free_port()
    ctl = controller.Controller(Handler(), hostname="127.0.0.1", port=port, decode_data=False)
    ctl.start()
    ctl.port = port
    ctl.received = Handler.received
    yield ctl
    ctl.stop()


def text(part):
    """A part's decoded text, with the line ends Python's parser leaves normalised."""
    return part.get_content().replace("\r\n", "\n")


def longest_line(content):
    return max(len(line.rstrip(b"\r")) for line in content.split(b"\n"))


def without_received(content):
    m = re.match(rb"Received: [^\r]*\r\n(\t[^\r]*\r\n)*", content)
    assert m, content[:200]
    return content[m.end():]


def test_sendmail_long_line_reaches_a_strict_smarthost_intact(strict, make_relay, tools):  # noqa: F811
    """Cron and script output: a 1500-octet line from sendmail, as the issue's report."""
    relay = make_relay(strict.port).start()
    long = "y" * 1500
    r = sendmail(tools, relay, ["ops@example.com"], f"Subject: long\n\n{long}\nend\n".encode())
    assert r.returncode == 0, r
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\)")
    relay.wait_log(r"lines over 998 octets: 1 part\(s\) sent as quoted-printable")
    [(_, _, content)] = strict.received
    assert longest_line(content) <= 998
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content_type() == "text/plain"
    assert text(msg) == f"{long}\nend\n"
    assert relay.files("failed") == []


def test_html_part_with_long_lines_over_smtp(strict, make_relay):
    """A camera's HTML mail: only the part with the long line changes its encoding."""
    relay = make_relay(strict.port).start()
    html = "<html><body>" + "<td>cell</td>" * 300 + "</body></html>"
    plain = "motion detected"
    body = ("From: cam@lan\r\nTo: ops@example.com\r\nSubject: alarm\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"XYZ\"\r\n\r\n"
            f"--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n"
            f"--XYZ\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n"
            "--XYZ--\r\n").encode()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@lan", ["ops@example.com"], body)
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\)")
    [(_, _, content)] = strict.received
    assert longest_line(content) <= 998
    msg = email.message_from_bytes(content, policy=email.policy.default)
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0]["Content-Transfer-Encoding"] is None
    # (The CRLF before a boundary belongs to the boundary, RFC 2046 §5.1.1.)
    assert text(parts[0]) == plain
    assert parts[1]["Content-Transfer-Encoding"] == "quoted-printable"
    assert text(parts[1]) == html


def test_what_cannot_be_reencoded_is_folded(strict, make_relay):
    """A base64 part with an over-long line (malformed, but sent): folded with CRLF SP,
    Postfix's last resort, and delivered instead of failed."""
    relay = make_relay(strict.port).start()
    blob = "QUJD" * 400
    body = ("MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{blob}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], body)
    relay.wait_log(r"lines over 998 octets, folded")
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\)")
    [(_, _, content)] = strict.received
    assert longest_line(content) <= 998
    assert content.replace(b"\r\n ", b"").endswith(blob.encode() + b"\r\n")


def test_passthrough_folds_long_lines(strict, make_relay):
    """Passthrough has no spool to look ahead in: a long line is folded on the way."""
    relay = make_relay(strict.port, mode="passthrough").start()
    text = b"z" * 2100
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: p\r\n\r\n" + text + b"\r\n")
    [(_, _, content)] = strict.received
    assert longest_line(content) <= 998
    assert without_received(content) == b"Subject: p\r\n\r\n" + b"z" * 998 + b"\r\n " + b"z" * 997 \
        + b"\r\n " + b"z" * 105 + b"\r\n"


def test_998_octet_line_after_a_stuffing_dot_is_taken_unchanged(sink, relay):
    """RFC 5321 §4.5.3.1.6 does not count the dot added for transparency: 1001 octets
    on the wire, 998 of text. Delivered byte for byte, nothing re-encoded."""
    c = Client(relay.port)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    line = b"." + b"d" * 997
    assert c.cmd(b"Subject: dot\r\n\r\n." + line + b"\r\n.\r\n").startswith("250")
    [msg] = sink.wait_for(1)
    assert without_received(msg["content"]) == b"Subject: dot\r\n\r\n" + line + b"\r\n"
    assert "lines over 998 octets" not in relay.log()


def send_raw(relay, body):
    c = Client(relay.port)
    for line in ["EHLO x", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
        c.cmd(line)
    r = c.cmd(body + b"\r\n.\r\n")
    assert r.startswith("250"), r
    queued = re.search(r"queued as ([0-9A-F]{23})", r)
    return queued and queued.group(1)


def test_missing_date_and_message_id_are_added_for_smtp_clients(sink, make_relay):
    relay = make_relay(sink.port, add_missing_headers=None).start()
    qid = send_raw(relay, b"Subject: from curl\r\n\r\nno date here")
    [msg] = sink.wait_for(1)
    head, _, body = without_received(msg["content"]).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"Subject: from curl"
    assert re.fullmatch(rb"Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000", lines[1]), lines
    assert lines[2] == f"Message-ID: <{qid}@relay.test>".encode()
    assert body == b"no date here\r\n"
    # A message with its own keeps them, and gets nothing added.
    send_raw(relay, b"Date: Tue, 1 Dec 2026 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nb")
    msg = next(m for m in sink.wait_for(2) if b"<x@y>" in m["content"])
    assert without_received(msg["content"]) == b"Date: Tue, 1 Dec 2026 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nb\r\n"


def test_add_missing_headers_no_leaves_the_message_alone(sink, make_relay, tools):  # noqa: F811
    relay = make_relay(sink.port, add_missing_headers="no").start()
    send_raw(relay, b"Subject: as sent\r\n\r\nx")
    [msg] = sink.wait_for(1)
    assert without_received(msg["content"]) == b"Subject: as sent\r\n\r\nx\r\n"
    # sendmail too: only From (a message needs one) is added.
    r = sendmail(tools, relay, ["-f", "s@box.lan", "ops@example.com"], b"Subject: local\n\nx\n")
    assert r.returncode == 0, r
    msg = next(m for m in sink.wait_for(2) if b"Subject: local" in m["content"])
    assert b"\r\nDate:" not in msg["content"] and b"\r\nMessage-ID:" not in msg["content"]


def test_passthrough_adds_missing_headers_too(sink, make_relay):
    relay = make_relay(sink.port, mode="passthrough", add_missing_headers=None).start()
    send_raw(relay, b"Subject: p\r\n\r\nx")
    [msg] = sink.wait_for(1)
    assert re.search(rb"\r\nDate: [^\r]+\r\nMessage-ID: <[0-9A-F]{23}@relay\.test>\r\n\r\nx\r\n$", msg["content"])
