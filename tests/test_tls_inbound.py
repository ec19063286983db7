"""TLS for devices talking to smtp-relayd: STARTTLS on every listener, implicit TLS on
`tls` listeners, tested with smtplib, swaks and openssl s_client."""
import re
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import Client, free_port


@pytest.fixture
def tls_relay(sink, make_relay, pki):
    implicit = free_port()
    relay = make_relay(sink.port, tls_cert=pki["cert"], tls_key=pki["key"])
    with open(relay.conf_path, "a") as f:
        f.write(f"listen 127.0.0.1:{implicit} tls\n")
    relay.start()
    relay.implicit_port = implicit
    return relay


def client_context(pki):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    return ctx


def test_smtplib_starttls(sink, tls_relay, pki):
    with smtplib.SMTP("127.0.0.1", tls_relay.port) as s:
        s.ehlo("dev1")
        assert s.has_extn("starttls")
        s.starttls(context=client_context(pki))
        code, _ = s.ehlo("dev1")
        assert code == 250 and not s.has_extn("starttls")
        s.sendmail("cam@example.net", ["ops@example.com"], b"Subject: secret\r\n\r\nover TLS\r\n")
    [msg] = sink.wait_for(1)
    assert b"with ESMTPS id" in msg["content"]
    tls_relay.wait_log(r"\[127\.0\.0\.1\]:\d+: TLS established \(TLSv1_3 ")


def test_smtplib_implicit_tls_listener(sink, tls_relay, pki):
    with smtplib.SMTP_SSL("127.0.0.1", tls_relay.implicit_port, context=client_context(pki)) as s:
        code, _ = s.ehlo("dev2")
        assert code == 250 and not s.has_extn("starttls")
        s.sendmail("cam@example.net", ["ops@example.com"], b"Subject: implicit\r\n\r\nx\r\n")
    [msg] = sink.wait_for(1)
    assert b"with ESMTPS id" in msg["content"]


def test_openssl_s_client_starttls(sink, tls_relay, pki):
    script = (b"EHLO s-client.test\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
              b"Subject: s_client\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{tls_relay.port}",
                        "-CAfile", pki["ca"], "-verify_return_error", "-quiet", "-ign_eof"],
                       input=script, capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert "250-STARTTLS" not in out, "after TLS, STARTTLS is not offered again"
    assert re.search(r"250 2\.0\.0 Ok: queued as [0-9A-F]{23}", out), out + r.stderr.decode()
    assert "221 2.0.0 Bye" in out
    [msg] = sink.wait_for(1)
    assert msg["content"].endswith(b"Subject: s_client\r\n\r\nhi\r\n")


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by .ci/run")
def test_swaks_tls(sink, tls_relay, pki):
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(tls_relay.port), "--tls",
                        "--tls-ca-path", pki["ca"], "--tls-verify", "--from", "a@b.c", "--to", "d@e.f",
                        "--header", "Subject: swaks", "--body", "from swaks"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TLS started" in r.stdout
    [msg] = sink.wait_for(1)
    assert b"Subject: swaks" in msg["content"]


def test_pipelined_injection_after_starttls_is_never_executed(sink, tls_relay, client_for):
    c = client_for(tls_relay)
    c.cmd("EHLO x")
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\n")
    assert c.reply().startswith("421 4.7.0 Error: data after STARTTLS")
    assert c.closed()
    tls_relay.wait_log(r"data after STARTTLS from \[127\.0\.0\.1\]:\d+ \(possible command injection\); closing")
    assert not re.search(r"250 2\.1\.0", tls_relay.log())


def test_plaintext_after_starttls_reply_never_runs(tls_relay, client_for):
    """Commands sent in plaintext after the 220 (a separate packet) are taken as TLS
    bytes: the handshake fails and the session ends; nothing is executed."""
    c = client_for(tls_relay)
    c.cmd("EHLO x")
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.send(b"NOOP\r\nMAIL FROM:<evil@x.y>\r\n")
    c.sock.settimeout(5)
    data = b""
    try:
        while chunk := c.sock.recv(4096):
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    assert b"250" not in data
    tls_relay.wait_log(r"\[127\.0\.0\.1\]:\d+: TLS handshake failed")


def test_starttls_refused_in_transaction_and_when_active(tls_relay, client_for, pki):
    c = client_for(tls_relay)
    c.cmd("EHLO x")
    c.cmd("MAIL FROM:<a@b.c>")
    c.cmd("RCPT TO:<d@e.f>")
    assert c.cmd("STARTTLS").startswith("503 5.5.1")
    with smtplib.SMTP_SSL("127.0.0.1", tls_relay.implicit_port, context=client_context(pki)) as s:
        s.ehlo()
        assert s.docmd("STARTTLS")[0] == 554


def test_bad_certificate_config_exits_78(tmp_path, pki):
    from conftest import RELAYD
    conf = tmp_path / "c.conf"
    conf.write_text(f"smarthost a.b:25\nsmarthost_tls none\ntls_cert {pki['ca']}\ntls_key {pki['cert']}\n")
    r = subprocess.run(RELAYD + ["-c", str(conf), "--check"], capture_output=True, text=True)
    assert r.returncode == 78 and "no usable private key" in r.stderr, r.stderr
