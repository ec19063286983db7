"""OAuth2 to the smarthost against real peers on loopback: a scriptable HTTPS token
endpoint (tests/oauth_mock.py, certificate from the test CA) and aiosmtpd taking
XOAUTH2 and OAUTHBEARER with only the tokens that endpoint issued."""
import os
import re
import smtplib
import stat
import subprocess
import time

import pytest

from conftest import RELAYD, free_port, server_context

pytest.importorskip("aiosmtpd.controller")
from oauth_mock import TokenEndpoint, start_smarthost  # noqa: E402

USER = "alerts@example.net"


@pytest.fixture
def oauth(pki, tmp_path):
    """Starts an endpoint and a smarthost; yields a maker of both."""
    made = []

    def make(implicit=False, **endpoint_kw):
        ep = TokenEndpoint(pki["cert"], pki["key"], free_port(), **endpoint_kw).start()
        ctl, smarthost = start_smarthost(ep, server_context(pki["cert"], pki["key"]), free_port(), implicit)
        made.append((ep, ctl))
        return ep, smarthost, ctl.port

    yield make
    for ep, ctl in made:
        ctl.stop()
        ep.stop()


def secret_file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text + "\n")
    p.chmod(0o600)
    return str(p)


def relay_conf(pki, ep, tmp_path, grant, auth="xoauth2", **extra):
    conf = dict(smarthost_tls="starttls", smarthost_ca_file=pki["ca"], smarthost_user=USER,
                smarthost_auth=auth)
    if grant == "client_credentials":
        conf.update(smarthost_oauth_token_url=ep.url, smarthost_oauth_client_id=ep.client_id,
                    smarthost_oauth_client_secret_file=secret_file(tmp_path, "client.secret", ep.client_secret),
                    smarthost_oauth_scope="https://outlook.office365.com/.default")
    elif grant == "refresh_token":
        conf.update(smarthost_oauth_token_url=ep.url, smarthost_oauth_client_id=ep.client_id,
                    smarthost_oauth_scope='"https://outlook.office.com/SMTP.Send offline_access"',
                    smarthost_oauth_refresh_token_file=secret_file(tmp_path, "refresh.token", "rt-initial-0"))
    conf.update(extra)
    return conf


def send(relay, subject="oauth"):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@example.net", ["ops@example.com"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def wait_for(cond, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_no_secret(text, ep, *extra):
    secrets = [ep.client_secret, "dc-secret-1", *ep.issued, *ep.refresh_tokens, *extra]
    for s in secrets:
        assert s not in text, f"secret {s[:12]}... in the output"


def token_requests(ep):
    return [f for p, f in ep.requests if p.endswith("/token")]


def test_client_credentials_with_xoauth2_delivers(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth()
    relay = make_relay(port, **relay_conf(pki, ep, tmp_path, "client_credentials")).start()
    send(relay)
    relay.wait_log(r"status=sent \(250 2\.0\.0 OK oauth smarthost\)")
    [form] = token_requests(ep)
    assert form == {"grant_type": "client_credentials", "client_id": "relay-app",
                    "client_secret": ep.client_secret, "scope": "https://outlook.office365.com/.default"}
    [(mech, token, on_line, ok)] = smarthost.logins
    assert (mech, on_line, ok) == ("XOAUTH2", True, True) and token == "at-1-"
    assert len(smarthost.messages) == 1
    log = relay.log()
    assert re.search(r"relay: AUTH Xoauth2 as alerts@example\.net with tokens from https://127\.0\.0\.1:\d+/"
                     r"tenant/oauth2/v2\.0/token \(client credentials grant\)", log), log
    assert "oauth: new access token from 127.0.0.1, expires in 3600s" in log
    assert_no_secret(log, ep)
    # --check shows the keys and paths, never the secrets.
    check = subprocess.run(RELAYD + ["-c", relay.conf_path, "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "smarthost_auth xoauth2" in check.stdout and "client.secret  # contents not shown" in check.stdout
    assert_no_secret(check.stdout + check.stderr, ep)


def test_refresh_token_with_oauthbearer_rotates_and_survives_a_restart(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth(rotate=True)
    conf = relay_conf(pki, ep, tmp_path, "refresh_token", auth="oauthbearer")
    relay = make_relay(port, **conf).start()
    send(relay, "first")
    relay.wait_log(r"status=sent")
    path = conf["smarthost_oauth_refresh_token_file"]
    [form] = token_requests(ep)
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "rt-initial-0"
    assert form["scope"] == "https://outlook.office.com/SMTP.Send offline_access"
    assert "client_secret" not in form, "a public client sends no secret"
    # The endpoint rotated it (and forgot the old one): the file holds the new one, 0600.
    [new] = ep.refresh_tokens
    assert open(path).read() == new + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)).count(".refresh.token.new") == 0
    relay.wait_log(r"oauth: new refresh token from 127\.0\.0\.1 saved to .*refresh\.token")
    assert smarthost.logins[0][0] == "OAUTHBEARER" and smarthost.logins[0][3]
    relay.stop()
    # After a restart the relay has only the file: the rotated token must work.
    relay.start()
    send(relay, "second")
    relay.wait_log(r"status=sent", count=2)
    assert [f["refresh_token"] for f in token_requests(ep)] == ["rt-initial-0", new]
    assert len(smarthost.messages) == 2
    assert_no_secret(relay.log(), ep, "rt-initial-0", new)


def test_expiry_forces_a_refresh_between_two_messages(make_relay, oauth, pki, tmp_path):
    # An 8 s token is used while it has more than a quarter of its life left.
    ep, smarthost, port = oauth(lifetime=8)
    relay = make_relay(port, **relay_conf(pki, ep, tmp_path, "client_credentials")).start()
    send(relay, "one")
    relay.wait_log(r"status=sent")
    send(relay, "two")
    relay.wait_log(r"status=sent", count=2)
    assert len(token_requests(ep)) == 1, "a fresh token is reused"
    time.sleep(6.5)
    send(relay, "three")
    relay.wait_log(r"status=sent", count=3)
    assert len(token_requests(ep)) == 2, "a token near its expiry is refreshed first"
    tokens = [t for _, t, _, ok in smarthost.logins if ok]
    assert tokens[0] == "at-1-" and tokens[-1] == "at-2-", smarthost.logins
    assert all(ok for *_, ok in smarthost.logins), "no AUTH failed on the way"


def test_535_to_a_token_from_memory_refreshes_once_and_delivers(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth()
    relay = make_relay(port, **relay_conf(pki, ep, tmp_path, "client_credentials")).start()
    send(relay, "one")
    relay.wait_log(r"status=sent")
    ep.revoke_access_tokens()  # the smarthost no longer takes what the relay holds
    time.sleep(2.5)  # past smarthost_idle (1s): the next message opens a new connection
    send(relay, "two")
    relay.wait_log(r"status=sent", count=2)
    log = relay.log()
    assert "refused the access token from memory (535 5.7.8 Username and Password not accepted" in log, log
    assert "error challenge" in log
    assert [ok for *_, ok in smarthost.logins] == [True, False, True]
    assert len(token_requests(ep)) == 2
    assert "status=deferred" not in log, "the retry happens at once, not after a backoff"


def test_endpoint_garbage_slow_and_down_defer_then_deliver(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth()
    relay = make_relay(port, **relay_conf(pki, ep, tmp_path, "client_credentials",
                                          smarthost_oauth_timeout="2s")).start()
    ep.mode = "garbage"
    send(relay)
    relay.wait_log(r"status=deferred \(451 4\.7\.0 cannot get an OAuth2 token from 127\.0\.0\.1: bad JSON")
    ep.mode = "slow 4"
    relay.wait_log(r"status=deferred \(451 4\.7\.0 cannot get an OAuth2 token from 127\.0\.0\.1: "
                   r"no answer within 2s", timeout=30)
    ep.mode = "503"
    relay.wait_log(r"HTTP 503 without a JSON error", timeout=30)
    ep.stop()
    relay.wait_log(r"status=deferred \(451 4\.7\.0 cannot get an OAuth2 token from 127\.0\.0\.1: "
                   r"cannot connect to 127\.0\.0\.1:\d+", timeout=30)
    assert relay.files("queue") and relay.files("failed") == [] and smarthost.messages == []
    ep.mode = "ok"
    ep.start()
    relay.wait_log(r"status=sent", timeout=30)
    relay.wait_log(r"oauth: tokens from 127\.0\.0\.1 work again")
    assert len(smarthost.messages) == 1


def test_invalid_grant_is_logged_once_and_the_mail_stays(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth()
    ep.refresh_tokens = set()  # revoked
    relay = make_relay(port, **relay_conf(pki, ep, tmp_path, "refresh_token")).start()
    send(relay)
    relay.wait_log(r"status=deferred \(451 4\.7\.0 no OAuth2 token: 127\.0\.0\.1 refused the refresh token", count=3,
                   timeout=40)
    log = relay.log()
    errors = re.findall(r"oauth: 127\.0\.0\.1 refused the refresh token \(HTTP 400, invalid_grant: "
                        r"AADSTS700082: The refresh token was revoked\.\).*run 'smtp-relayd oauth login'.*"
                        r"mail stays queued", log)
    assert len(errors) == 1, log
    assert len(relay.files("queue")) == 1 and relay.files("failed") == []
    assert smarthost.logins == []


def test_a_4_kib_token_goes_after_the_334(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth(token_size=4096, implicit=True)
    conf = relay_conf(pki, ep, tmp_path, "client_credentials", smarthost_tls="implicit")
    relay = make_relay(port, **conf).start()
    send(relay)
    relay.wait_log(r"status=sent")
    [(mech, token, on_line, ok)] = smarthost.logins
    assert ok and len(token) > 4096 and not on_line, "the AUTH line would pass 512 octets"
    assert token[:12] not in relay.log()


def test_token_command(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth()
    token_file = tmp_path / "current.token"
    token_file.write_text(ep.issue()["access_token"] + "\n")
    # No shell: the words go to the program as they are.
    conf = dict(smarthost_tls="starttls", smarthost_ca_file=pki["ca"], smarthost_user=USER,
                smarthost_auth="xoauth2", smarthost_oauth_token_command=f"/bin/cat '{token_file}'")
    relay = make_relay(port, **conf).start()
    send(relay)
    relay.wait_log(r"status=sent")
    assert smarthost.logins[0][3] and ep.requests == []
    assert "with tokens from the token command /bin/cat" in relay.log()
    # A failing command defers with its first line of stderr.
    token_file.unlink()
    time.sleep(2.5)
    send(relay, "two")
    relay.wait_log(r"status=deferred \(451 4\.7\.0 smarthost_oauth_token_command /bin/cat: exit status: 1: "
                   r"/bin/cat: .*current\.tok")
    assert_no_secret(relay.log(), ep)


def test_device_code_login_then_oauth_token(oauth, pki, tmp_path, make_relay):
    ep, smarthost, port = oauth()
    conf = relay_conf(pki, ep, tmp_path, "refresh_token")
    path = conf["smarthost_oauth_refresh_token_file"]
    os.unlink(path)  # a fresh box: no refresh token yet, and --check is still fine
    relay = make_relay(port, **conf)
    check = subprocess.run(RELAYD + ["-c", relay.conf_path, "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    r = subprocess.run(RELAYD + ["oauth", "-c", relay.conf_path, "login"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "open https://microsoft.com/devicelogin in a browser and enter the code ABCD-EFGH" in r.stdout
    assert f"Signed in. The refresh token is saved in {path}." in r.stdout
    assert open(path).read() == "rt-from-device\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ep.device_polls == 3, "pending twice, then the token"
    [(_, dev)] = [(p, f) for p, f in ep.requests if p.endswith("/devicecode")]
    assert dev == {"client_id": "relay-app", "scope": "https://outlook.office.com/SMTP.Send offline_access"}
    assert "rt-from-device" not in r.stdout + r.stderr and "dc-secret-1" not in r.stdout + r.stderr
    # oauth token: one fetch, only the expiry printed.
    r = subprocess.run(RELAYD + ["-c", relay.conf_path, "oauth", "token"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"OK: got an access token for alerts@example\.net; it expires in 3600s \(at [-0-9T:]+Z?\)\n",
                        r.stdout), r.stdout
    assert_no_secret(r.stdout + r.stderr, ep)
    # With the endpoint down it says why and exits 75 (EX_TEMPFAIL).
    ep.stop()
    r = subprocess.run(RELAYD + ["-c", relay.conf_path, "oauth", "token"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 75 and "cannot connect to 127.0.0.1" in r.stderr, r


def test_passthrough_with_xoauth2(make_relay, oauth, pki, tmp_path):
    ep, smarthost, port = oauth()
    relay = make_relay(port, mode="passthrough", **relay_conf(pki, ep, tmp_path, "client_credentials")).start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo()
        s.mail("cam@example.net")
        s.rcpt("ops@example.com")
        code, text = s.data(b"Subject: through\r\n\r\nnow\r\n")
    assert code == 250 and b"OK oauth smarthost" in text, (code, text)
    assert len(smarthost.messages) == 1 and smarthost.logins[0][3]
    assert relay.files("queue") == []
    assert_no_secret(relay.log(), ep)


def test_the_token_endpoint_certificate_is_verified(make_relay, pki, tmp_path):
    # A self-signed certificate for 127.0.0.1: the relay sends nothing to it.
    ep = TokenEndpoint(pki["rogue_cert"], pki["rogue_key"], free_port()).start()
    ctl, smarthost = start_smarthost(ep, server_context(pki["cert"], pki["key"]), free_port())
    try:
        relay = make_relay(ctl.port, **relay_conf(pki, ep, tmp_path, "client_credentials")).start()
        send(relay)
        relay.wait_log(r"status=deferred \(451 4\.7\.0 cannot get an OAuth2 token from 127\.0\.0\.1: "
                       r"TLS handshake failed: invalid peer certificate")
        assert ep.requests == [] and smarthost.logins == []
    finally:
        ctl.stop()
        ep.stop()


def test_oauth_command_without_oauth_config(make_relay, sink):
    relay = make_relay(sink.port)
    r = subprocess.run(RELAYD + ["oauth", "-c", relay.conf_path, "token"], capture_output=True, text=True)
    assert r.returncode == 78 and "smarthost_auth is password" in r.stderr, r
    r = subprocess.run(RELAYD + ["oauth", "-c", relay.conf_path, "refresh"], capture_output=True, text=True)
    assert r.returncode == 64 and "usage: smtp-relayd oauth" in r.stderr, r
