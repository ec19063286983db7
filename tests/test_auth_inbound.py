"""AUTH for devices (RFC 4954): users file with SHA-512-crypt hashes, PLAIN and LOGIN,
offered only over TLS (or on loopback with auth_plaintext), tested with smtplib and swaks."""
import re
import shutil
import smtplib
import ssl
import subprocess
import sys

import pytest

from conftest import BINARY, RELAYD


@pytest.fixture
def users_file(tmp_path):
    def hashed(pw):
        return subprocess.run(["openssl", "passwd", "-6", pw], capture_output=True, text=True, check=True).stdout.strip()
    p = tmp_path / "users"
    p.write_text(f"# devices\ncam1:{hashed('cam pass 1')}\nprinter:{hashed('pr1nt')}\n")
    p.chmod(0o600)
    return str(p)


@pytest.fixture
def auth_relay(sink, make_relay, pki, users_file):
    def start(**conf):
        settings = dict(tls_cert=pki["cert"], tls_key=pki["key"], auth_users=users_file, allow="none")
        settings.update(conf)
        return make_relay(sink.port, **settings).start()
    return start


def ctx(pki):
    return ssl.create_default_context(cafile=pki["ca"])


def test_auth_plain_and_login_over_starttls(sink, auth_relay, pki):
    relay = auth_relay()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo()
        assert not s.has_extn("auth"), "AUTH is not offered before TLS"
        s.starttls(context=ctx(pki))
        s.ehlo()
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        # Outside `allow`, relaying needs AUTH.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("cam1@example.net", ["ops@example.com"], b"Subject: no\r\n\r\nx\r\n")
        s.rset()
        s.login("cam1", "cam pass 1")
        s.sendmail("cam1@example.net", ["ops@example.com"], b"Subject: yes\r\n\r\nx\r\n")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.starttls(context=ctx(pki))
        s.ehlo()
        code, _ = s.auth("LOGIN", lambda challenge=None: {b"Username:": "printer", b"Password:": "pr1nt"}.get(challenge) if challenge else "printer", initial_response_ok=False)
        assert code == 235
        s.sendmail("printer@example.net", ["ops@example.com"], b"Subject: login\r\n\r\nx\r\n")
    msgs = sink.wait_for(2)
    assert all(b"with ESMTPSA id" in m["content"] for m in msgs)
    log = relay.wait_log(r"AUTH LOGIN as printer")
    assert re.search(r"AUTH PLAIN as cam1", log)
    assert re.search(r"from=<cam1@example\.net>.*sasl_username=cam1", log)
    assert "cam pass 1" not in log and "pr1nt" not in log


def test_wrong_password_535_logged_and_disconnect_after_three(auth_relay, pki):
    relay = auth_relay()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.starttls(context=ctx(pki))
        s.ehlo()
        # One attempt each (smtplib's login() would fall back to a second mechanism).
        for attempt in range(2):
            code, text = s.docmd("AUTH", "PLAIN AGNhbTEAV3IwbmdQdw==")
            assert code == 535 and b"5.7.8" in text
        code, text = s.docmd("AUTH", "PLAIN AGNhbTEAV3IwbmdQdw==")
        assert code == 421 and b"too many failed" in text
    log = relay.wait_log(r"AUTH failed from \[127\.0\.0\.1\]:\d+: user=<cam1>, mechanism=PLAIN", count=3)
    assert "Wr0ngPw" not in log


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by .ci/run")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_tls_auth(sink, auth_relay, pki, mechanism):
    relay = auth_relay()
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(relay.port), "--tls",
                        "--tls-ca-path", pki["ca"], "--tls-verify", "--auth", mechanism,
                        "--auth-user", "cam1", "--auth-password", "cam pass 1",
                        "--from", "cam1@example.net", "--to", "ops@example.com"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0 Authentication successful" in r.stdout
    sink.wait_for(1)


def test_require_auth_inside_allow(sink, auth_relay, pki):
    relay = auth_relay(allow="127.0.0.0/8", require_auth="yes")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.starttls(context=ctx(pki))
        s.ehlo()
        code, text = s.docmd("MAIL", "FROM:<a@b.c>")
        assert code == 530 and b"5.7.0" in text
        s.login("cam1", "cam pass 1")
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: r\r\n\r\nx\r\n")
    sink.wait_for(1)


def test_auth_plaintext_on_loopback(sink, make_relay, users_file):
    relay = make_relay(sink.port, auth_users=users_file, auth_plaintext="yes", allow="none").start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo()
        assert s.has_extn("auth") and not s.has_extn("starttls")
        s.login("cam1", "cam pass 1")
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: plain\r\n\r\nx\r\n")
    [msg] = sink.wait_for(1)
    assert b"with ESMTPA id" in msg["content"]


@pytest.mark.parametrize("conf,error", [
    ("require_auth yes\n", r":\d+: require_auth needs auth_users"),
    ("auth_users USERS\n", r":\d+: AUTH is only offered over TLS"),
])
def test_bad_auth_config(tmp_path, users_file, conf, error):
    path = tmp_path / "c.conf"
    path.write_text("smarthost 127.0.0.1:25\nsmarthost_tls none\n" + conf.replace("USERS", users_file))
    r = subprocess.run(RELAYD + ["-c", str(path), "--check"], capture_output=True, text=True)
    assert r.returncode == 78 and re.search(error, r.stderr), r.stderr


def test_users_file_permissions_and_format(tmp_path, users_file, pki):
    path = tmp_path / "c.conf"
    path.write_text(f"smarthost 127.0.0.1:25\nsmarthost_tls none\ntls_cert {pki['cert']}\ntls_key {pki['key']}\n"
                    f"auth_users {users_file}\n")
    r = subprocess.run(RELAYD + ["-c", str(path), "--check"], capture_output=True, text=True)
    assert r.returncode == 0 and "# auth_users: 2 user(s)" in r.stdout and "$6$" not in r.stdout
    import os
    os.chmod(users_file, 0o644)
    r = subprocess.run(RELAYD + ["-c", str(path), "--check"], capture_output=True, text=True)
    assert r.returncode == 78 and "permissions 0644 must be 0600 or stricter" in r.stderr
    os.chmod(users_file, 0o600)
    with open(users_file, "a") as f:
        f.write("bad line without hash\n")
    r = subprocess.run(RELAYD + ["-c", str(path), "--check"], capture_output=True, text=True)
    assert r.returncode == 78 and re.search(r"users:4: expected user:HASH", r.stderr), r.stderr


def test_auth_not_offered_without_tls_on_a_non_loopback_listener(users_file):
    """auth_plaintext applies to loopback only: checked in a private network namespace
    where a non-loopback address exists (see netns_auth_check.py)."""
    import os
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to make a network namespace")
    helper = os.path.join(os.path.dirname(__file__), "netns_auth_check.py")
    r = subprocess.run(["unshare", "-n", sys.executable, helper, BINARY, users_file],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "127.0.0.1: AUTH offered=True" in r.stdout and "192.0.2.1: AUTH offered=False, AUTH answered 538" in r.stdout
