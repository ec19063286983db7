"""TLS and AUTH towards the smarthost, against real peers: aiosmtpd (STARTTLS, implicit
TLS, AUTH PLAIN and LOGIN) and the scripted sink, with a test CA made by openssl."""
import os
import re
import smtplib
import subprocess
import time

import pytest

from conftest import RELAYD, Plan, Sink, free_port, server_context

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult  # noqa: E402


class Recorder:
    def __init__(self):
        self.messages = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK aiosmtpd"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"relay@example.net" and auth_data.password == b"s3cret pass"
        self.logins.append((mechanism, auth_data.login, ok))
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def aiosmtpd_tls(pki):
    controllers = []

    def start(implicit=False, cert=None, key=None, mechanisms=None):
        rec = Recorder()
        port = free_port()
        ctx = server_context(cert or pki["cert"], key or pki["key"])
        kw = dict(hostname="127.0.0.1", port=port, authenticator=rec.authenticator, decode_data=False)
        if mechanisms:
            kw["auth_exclude_mechanism"] = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
        if implicit:
            kw.update(ssl_context=ctx, auth_require_tls=False)
        else:
            kw.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        ctl = aiosmtpd_controller.Controller(rec, **kw)
        ctl.start()
        controllers.append(ctl)
        return port, rec

    yield start
    for c in controllers:
        c.stop()


@pytest.fixture
def password_file(tmp_path):
    p = tmp_path / "smarthost.pass"
    p.write_text("s3cret pass\n")
    p.chmod(0o600)
    return str(p)


def send(relay, body=b"Subject: tls\r\n\r\nover TLS\r\n", rcpts=("ops@example.com",)):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@example.net", list(rcpts), body)


def test_starttls_and_auth_plain_to_aiosmtpd(make_relay, aiosmtpd_tls, pki, password_file):
    port, rec = aiosmtpd_tls()
    relay = make_relay(port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=password_file).start()
    send(relay)
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\)")
    [(frm, tos, content)] = rec.messages
    assert frm == "cam@example.net" and tos == ["ops@example.com"] and content.endswith(b"\r\n\r\nover TLS\r\n")
    assert rec.logins == [("PLAIN", b"relay@example.net", True)]
    log = relay.log()
    assert re.search(r"smarthost TLS Starttls, trusting 1 CA\(s\) from .*ca\.pem", log)
    assert "s3cret" not in log


def test_implicit_tls_and_auth_login_to_aiosmtpd(make_relay, aiosmtpd_tls, pki, password_file):
    port, rec = aiosmtpd_tls(implicit=True, mechanisms=["LOGIN"])
    relay = make_relay(port, smarthost_tls="implicit", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=password_file).start()
    send(relay)
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\)")
    assert rec.logins == [("LOGIN", b"relay@example.net", True)]
    assert len(rec.messages) == 1


def test_auth_refused_keeps_mail_queued(make_relay, aiosmtpd_tls, pki, tmp_path):
    port, rec = aiosmtpd_tls()
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    relay = make_relay(port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=str(wrong)).start()
    send(relay)
    relay.wait_log(r"refused our credentials \(535 5\.7\.8 .*\): check smarthost_user and smarthost_password_file; mail stays queued")
    relay.wait_log(r"status=deferred \(535 5\.7\.8")
    # One line says it, not a second warning beside it.
    assert not re.search(r"warning: relay: 535", relay.log()), relay.log()
    assert rec.messages == [] and relay.files("failed") == [] and len(relay.files("queue")) == 1
    assert "not the password" not in relay.log()
    # Fix the password: the next try delivers, without a restart.
    wrong.write_text("s3cret pass\n")
    relay.wait_log(r"status=sent", timeout=30)
    assert len(rec.messages) == 1


def test_starttls_required_but_not_offered_sends_nothing(make_relay, sink, pki):
    relay = make_relay(sink.port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"]).start()
    send(relay)
    relay.wait_log(r"status=deferred \(454 4\.7\.0 smarthost does not offer STARTTLS; nothing was sent\)")
    assert not any(c.upper().startswith((b"MAIL", b"AUTH", b"RCPT")) for c in sink.commands)
    deadline = time.time() + 10  # the sink's thread may read the QUIT a moment later
    while not any(c.startswith(b"QUIT") for c in sink.commands) and time.time() < deadline:
        time.sleep(0.05)
    assert any(c.startswith(b"QUIT") for c in sink.commands)
    assert len(relay.files("queue")) == 1


def test_untrusted_certificate_sends_nothing(make_relay, aiosmtpd_tls, pki, password_file):
    port, rec = aiosmtpd_tls(cert=pki["rogue_cert"], key=pki["rogue_key"])
    relay = make_relay(port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=password_file).start()
    send(relay)
    relay.wait_log(r"status=deferred \(451 4\.7\.0 127\.0\.0\.1:\d+: TLS handshake failed: invalid peer certificate")
    assert rec.messages == [] and rec.logins == []
    assert len(relay.files("queue")) == 1


def test_certificate_not_valid_yet_defers_and_keeps_verifying(make_relay, aiosmtpd_tls, pki):
    port, rec = aiosmtpd_tls(cert=pki["future_cert"], key=pki["future_key"])
    relay = make_relay(port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"]).start()
    send(relay)
    relay.wait_log(r"status=deferred \(451 4\.7\.0 .*certificate not valid yet.*is the system clock set\? the message stays queued\)")
    relay.wait_log(r"status=deferred", count=2, timeout=30)
    assert rec.messages == [] and len(relay.files("queue")) == 1


def test_fingerprint_pin_match_and_mismatch(make_relay, aiosmtpd_tls, pki):
    port, rec = aiosmtpd_tls()
    # Matching pin: trusted without any CA.
    relay = make_relay(port, smarthost_tls="starttls", smarthost_fingerprint=pki["fingerprint"]).start()
    send(relay)
    relay.wait_log(r"status=sent")
    assert len(rec.messages) == 1
    # Another certificate: refused, although it is signed by nobody we trust either way.
    port2, rec2 = aiosmtpd_tls(cert=pki["rogue_cert"], key=pki["rogue_key"])
    relay2 = make_relay(port2, smarthost_tls="starttls", smarthost_fingerprint=pki["fingerprint"]).start()
    send(relay2)
    relay2.wait_log(r"status=deferred \(.*does not match smarthost_fingerprint")
    assert rec2.messages == []


def test_tls_verify_no_is_loud(make_relay, aiosmtpd_tls, pki):
    port, rec = aiosmtpd_tls(cert=pki["rogue_cert"], key=pki["rogue_key"])
    relay = make_relay(port, smarthost_tls="starttls", smarthost_tls_verify="no").start()
    send(relay)
    relay.wait_log(r"status=sent")
    log = relay.log()
    assert "warning: smarthost_tls_verify no: the smarthost's certificate is NOT verified" in log
    assert re.search(r"warning: relay: TLS certificate of 127\.0\.0\.1:\d+ NOT verified", log)


def test_bytes_after_starttls_reply_are_refused(make_relay, pki):
    plan = Plan(ehlo=["250-sink", "250 STARTTLS"], starttls_reply="220 2.0.0 go ahead\r\n250 injected")
    sink = Sink(plan=plan).start()
    try:
        relay = make_relay(sink.port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"]).start()
        send(relay)
        relay.wait_log(r"status=deferred \(451 4\.5\.0 127\.0\.0\.1:\d+ sent data after its STARTTLS reply")
        assert not any(c.startswith(b"MAIL") for c in sink.commands)
    finally:
        sink.stop()


def test_sink_starttls_then_mail(make_relay, pki):
    """The scripted sink over STARTTLS: EHLO again after the handshake, then mail."""
    plan = Plan(ehlo=["250-sink", "250-PIPELINING", "250 STARTTLS"], tls_context=server_context(pki["cert"], pki["key"]))
    sink = Sink(plan=plan).start()
    try:
        relay = make_relay(sink.port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"]).start()
        send(relay)
        [msg] = sink.wait_for(1)
        assert sink.tls_sessions == 1
        ehlos = [c for c in sink.commands if c.startswith(b"EHLO")]
        assert len(ehlos) == 2, "EHLO again after STARTTLS"
    finally:
        sink.stop()


@pytest.mark.parametrize("conf,error", [
    ({"smarthost_user": "u"}, r":\d+: smarthost_user needs smarthost_password_file"),
    ({"smarthost_tls": "none", "smarthost_user": "u", "smarthost_password_file": "PASS"},
     r":\d+: with smarthost_tls none the password would cross the network in clear"),
    ({"smarthost_fingerprint": "sha256:abcd"}, r":\d+: 'sha256:abcd' is not sha256:HEX"),
    ({"smarthost_tls": "sometimes"}, r":\d+: smarthost_tls must be 'starttls', 'implicit' or 'none'"),
    ({"smarthost_ca_file": "/nonexistent/ca.pem"}, r"/nonexistent/ca\.pem: "),
])
def test_bad_tls_config_exits_78(tmp_path, password_file, conf, error):
    lines = ["smarthost 127.0.0.1:2525"] + [f"{k} {v.replace('PASS', password_file)}" for k, v in conf.items()]
    path = tmp_path / "c.conf"
    path.write_text("\n".join(lines) + "\n")
    r = subprocess.run(RELAYD + ["-c", str(path), "--check"], capture_output=True, text=True)
    assert r.returncode == 78, r
    assert re.search(error, r.stderr), r.stderr


def test_password_file_permissions_are_checked(tmp_path, password_file):
    os.chmod(password_file, 0o644)
    path = tmp_path / "c.conf"
    path.write_text(f"smarthost 127.0.0.1:2525\nsmarthost_user u\nsmarthost_password_file {password_file}\n")
    for extra in [["--check"], []]:
        r = subprocess.run(RELAYD + ["-c", str(path)] + extra, capture_output=True, text=True, timeout=10)
        assert r.returncode == 78
        assert f"{password_file}: permissions 0644 must be 0600 or stricter" in r.stderr, r.stderr
    os.chmod(password_file, 0o600)
    r = subprocess.run(RELAYD + ["-c", str(path), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout and "contents not shown" in r.stdout


@pytest.mark.parametrize("implicit", [False, True])
def test_passthrough_over_tls_and_auth(make_relay, aiosmtpd_tls, pki, password_file, implicit):
    """mode passthrough: the worker's own smarthost connection does STARTTLS (or
    implicit TLS) and AUTH, and the client hears aiosmtpd's own final reply."""
    port, rec = aiosmtpd_tls(implicit=implicit)
    relay = make_relay(port, mode="passthrough", smarthost_tls="implicit" if implicit else "starttls",
                       smarthost_ca_file=pki["ca"], smarthost_user="relay@example.net",
                       smarthost_password_file=password_file).start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo("cam")
        s.mail("cam@example.net")
        s.rcpt("ops@example.com")
        assert s.data(b"Subject: pt\r\n\r\nthrough TLS\r\n") == (250, b"2.0.0 OK aiosmtpd")
    [(frm, tos, content)] = rec.messages
    assert frm == "cam@example.net" and content.endswith(b"\r\n\r\nthrough TLS\r\n")
    assert [ok for _, _, ok in rec.logins] == [True]
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK aiosmtpd\), passthrough")


def test_passthrough_refused_credentials_are_a_temporary_failure(make_relay, aiosmtpd_tls, pki, tmp_path):
    port, rec = aiosmtpd_tls()
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not it\n")
    wrong.chmod(0o600)
    relay = make_relay(port, mode="passthrough", smarthost_tls="starttls", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=str(wrong)).start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo("cam")
        code, text = s.mail("cam@example.net")
    # Our configuration is at fault, not the client's message: it should retry.
    assert code == 451 and text.startswith(b"4.4.0"), (code, text)
    relay.wait_log(r"passthrough: cannot use 127\.0\.0\.1:\d+ \(AUTH\): 535")
    assert rec.messages == []


def run_test_command(relay, *args):
    r = subprocess.run(RELAYD + ["test", "-c", relay.conf_path, *args], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_test_command_through_tls_and_auth(make_relay, aiosmtpd_tls, pki, password_file):
    port, rec = aiosmtpd_tls()
    relay = make_relay(port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=password_file)
    code, out = run_test_command(relay, "ops@example.com")
    assert code == 0, out
    assert re.search(rf"^connected to 127\.0\.0\.1:{port} at 127\.0\.0\.1:{port}$", out, re.M), out
    assert re.search(r"^TLS \(STARTTLS\): TLSv1_[23] \S+; certificate sha256:[0-9a-f:]+ \(chain of 1\)$", out, re.M), out
    assert "  > STARTTLS\n  < 220 " in out
    assert "  > AUTH PLAIN **** (hidden)\n  < 235 " in out
    assert "s3cret" not in out, "the password is never printed"
    assert "  > MAIL FROM:<relay@example.net>" in out, "the sender defaults to smarthost_user"
    assert f"OK: 127.0.0.1:{port} accepted the test message for <ops@example.com>: 250 2.0.0 OK aiosmtpd" in out
    [(frm, tos, content)] = rec.messages
    assert frm == "relay@example.net" and tos == ["ops@example.com"]
    assert b"Subject: smtp-relayd test from relay.test\r\n" in content
    # Nothing went through the queue.
    assert relay.files("queue") == [] and not os.path.exists(os.path.join(relay.spool, "queue", "x"))


def test_test_command_says_what_to_fix(make_relay, aiosmtpd_tls, pki, tmp_path):
    port, rec = aiosmtpd_tls(mechanisms=["LOGIN"])
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    relay = make_relay(port, smarthost_tls="starttls", smarthost_ca_file=pki["ca"],
                       smarthost_user="relay@example.net", smarthost_password_file=str(wrong))
    code, out = run_test_command(relay, "ops@example.com")
    assert code == 1, out
    assert "  > AUTH LOGIN\n  < 334 " in out and "**** (hidden)" in out and "not the password" not in out
    assert "FAILED at AUTH: 535 5.7.8" in out
    assert "what to check: the smarthost refused the user or the password: check smarthost_user and " \
           "smarthost_password_file" in out
    assert rec.messages == []

    # An untrusted (self-signed) certificate.
    port2, _ = aiosmtpd_tls(cert=pki["rogue_cert"], key=pki["rogue_key"])
    relay2 = make_relay(port2, smarthost_tls="starttls", smarthost_ca_file=pki["ca"])
    code, out = run_test_command(relay2, "ops@example.com")
    assert code == 1, out
    assert "FAILED at STARTTLS: " in out and "invalid peer certificate" in out
    assert "what to check: the certificate is not signed by a CA this box trusts" in out

    # A certificate not valid yet: the clock.
    port3, _ = aiosmtpd_tls(cert=pki["future_cert"], key=pki["future_key"])
    relay3 = make_relay(port3, smarthost_tls="starttls", smarthost_ca_file=pki["ca"])
    code, out = run_test_command(relay3, "ops@example.com")
    assert code == 1 and "check the system time" in out, out

    # A closed port.
    closed = free_port()
    relay4 = make_relay(closed, smarthost_tls="none", smarthost_connect_timeout="3s")
    code, out = run_test_command(relay4, "ops@example.com")
    assert code == 1, out
    assert f"FAILED at the connection: 451 4.4.1 cannot connect to smarthost 127.0.0.1:{closed}" in out
    assert f"what to check: nothing accepts connections on 127.0.0.1:{closed}" in out


def test_test_command_usage(make_relay, sink):
    relay = make_relay(sink.port)
    code, out = run_test_command(relay)
    assert code == 64 and "which address?" in out
    code, out = run_test_command(relay, "not an address")
    assert code == 64
    code, out = run_test_command(relay, "ops@example.com", "nosuch")
    assert code == 64 and "no smarthost named 'nosuch'" in out
    code, out = run_test_command(relay, "ops@example.com", "--from", "alerts@example.com")
    assert code == 0 and "  > MAIL FROM:<alerts@example.com>" in out, out
    [m] = sink.wait_for(1)
    assert m["sender"] == "alerts@example.com"
