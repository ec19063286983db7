"""`metrics_listen`: Prometheus text on GET /metrics, checked with curl against known
traffic, and bounded against junk, slow and huge requests."""
import re
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import Plan, Sink, free_port


def curl(port, path="/metrics"):
    r = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", f"http://127.0.0.1:{port}{path}"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.decode().partition("\r\n\r\n")
    return head, body


def samples(body):
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_counters_match_known_traffic(make_relay, client_for):
    sink = Sink(plan=Plan(rcpt={"nobody@example.com": ["550 5.1.1 unknown"]})).start()
    try:
        mport = free_port()
        relay = make_relay(sink.port, metrics_listen=f"127.0.0.1:{mport}",
                           allow_recipient="*@example.com").start()
        relay.wait_log(rf"metrics: serving http://127.0.0.1:{mport}/metrics to 127.0.0.0/8 ::1/128")
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("cam@example.net", ["a@example.com"], b"Subject: 1\r\n\r\none\r\n")
            s.sendmail("cam@example.net", ["b@example.com", "c@example.com"], b"Subject: 2\r\n\r\ntwo\r\n")
            s.sendmail("cam@example.net", ["nobody@example.com"], b"Subject: 3\r\n\r\nthree\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                s.sendmail("cam@example.net", ["x@elsewhere.org"], b"Subject: 4\r\n\r\nfour\r\n")
        # Two messages, the notice for the third (to its sender, allowed: it is local).
        sink.wait_for(3)
        relay.wait_log(r"removed \(delivered\)", count=3)
        head, body = curl(mport)
        assert head.startswith("HTTP/1.1 200 OK")
        assert "Content-Type: text/plain; version=0.0.4" in head
        m = samples(body)
        assert m["smtp_relayd_messages_accepted_total"] == 3
        assert m['smtp_relayd_messages_rejected_total{reason="recipient_not_allowed"}'] == 1
        assert m['smtp_relayd_messages_rejected_total{reason="relay_denied"}'] == 0
        # a, b, c and the notice's recipient.
        assert m["smtp_relayd_deliveries_total"] == 4
        assert m["smtp_relayd_failures_total"] == 1 and m["smtp_relayd_notices_total"] == 1
        assert m["smtp_relayd_failed_messages"] == 1
        assert m["smtp_relayd_queue_messages"] == 0 and m["smtp_relayd_queue_oldest_age_seconds"] == 0
        assert m["smtp_relayd_connections_total"] >= 1
        assert m['smtp_relayd_delivery_delay_seconds_bucket{le="+Inf"}'] == 4
        assert m["smtp_relayd_delivery_delay_seconds_count"] == 4
        assert m[f'smtp_relayd_smarthost_failing{{smarthost="127.0.0.1:{sink.port}"}}'] == 0
        assert m[f'smtp_relayd_smarthost_last_success_seconds{{smarthost="127.0.0.1:{sink.port}"}}'] > 1e9
        assert m["smtp_relayd_accepted_bytes_total"] > 0
        # Every sample line has a HELP and TYPE for its family.
        for fam in {re.sub(r"(_bucket|_sum|_count)?(\{.*)?$", "", n) for n in m}:
            assert f"# TYPE {fam} " in body, fam
        assert curl(mport, "/")[0].startswith("HTTP/1.1 404")
    finally:
        sink.stop()


def test_queue_gauges_and_failing_smarthost(make_relay):
    mport = free_port()
    relay = make_relay(free_port(), metrics_listen=f"127.0.0.1:{mport}", retry_min="1h",
                       retry_max="1h").start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@example.net", ["a@example.com"], b"Subject: 1\r\n\r\none\r\n")
    relay.wait_log(r"status=deferred")
    time.sleep(1.1)
    m = samples(curl(mport)[1])
    assert m["smtp_relayd_queue_messages"] == 1 and m["smtp_relayd_queue_bytes"] > 0
    assert m["smtp_relayd_queue_oldest_age_seconds"] >= 1
    assert m["smtp_relayd_deferrals_total"] == 1
    [failing] = [v for k, v in m.items() if k.startswith("smtp_relayd_smarthost_failing")]
    assert failing == 1


def raw(port, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        try:
            s.sendall(data)
        except OSError:
            pass
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return got


def test_junk_slow_and_huge_requests_are_bounded(sink, make_relay):
    mport = free_port()
    relay = make_relay(sink.port, metrics_listen=f"127.0.0.1:{mport}").start()
    assert raw(mport, b"\x00\xff\xfe junk\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(mport, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(mport, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 3000).startswith(b"HTTP/1.1 431 ")
    # Slow: nothing is sent; the connection is closed after the 5 s deadline.
    held = [socket.create_connection(("127.0.0.1", mport)) for _ in range(8)]
    started = time.time()
    # Beyond 8 at once: 503 at once.
    assert raw(mport, b"").startswith(b"HTTP/1.1 503 ")
    # The SMTP side is not held by any of this.
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as s:
        assert s.noop()[0] == 250
    for h in held:
        h.settimeout(10)
        assert h.recv(100) == b""
    assert 4 < time.time() - started < 9
    for h in held:
        h.close()
    # And after all of it, a normal scrape works.
    head, body = curl(mport)
    assert head.startswith("HTTP/1.1 200 ") and "smtp_relayd_start_time_seconds" in body


def test_client_outside_metrics_allow_is_refused(sink, make_relay):
    mport = free_port()
    relay = make_relay(sink.port, metrics_listen=f"127.0.0.1:{mport}", metrics_allow="10.0.0.0/8").start()
    head, body = curl(mport)
    assert head.startswith("HTTP/1.1 403 ") and "smtp_relayd" not in body
    relay.wait_log(r"metrics: refused \[127\.0\.0\.1\]:\d+ \(not in metrics_allow\)")
