"""SIGHUP: the config, the aliases and the listeners are read again and applied to new
sessions and deliveries; a session in progress finishes as it began; a broken config
is refused and the running one stays."""
import signal
import smtplib

import pytest

from conftest import Client, free_port


def rewrite(relay, old, new):
    with open(relay.conf_path) as f:
        text = f.read()
    assert old in text
    with open(relay.conf_path, "w") as f:
        f.write(text.replace(old, new))


def hup(relay, count=1):
    relay.proc.send_signal(signal.SIGHUP)
    return relay.wait_log(r"SIGHUP received: reloading", count=count)


def test_allow_and_alias_change_without_dropping_a_session(sink, make_relay):
    relay = make_relay(sink.port, alias="root first@example.com").start()
    # A session in progress: EHLO, MAIL, RCPT done before the reload.
    c = Client(relay.port)
    assert c.cmd(b"EHLO old\r\n").startswith("250")
    assert c.cmd(b"MAIL FROM:<cron@relay.test>\r\n").startswith("250")
    assert c.cmd(b"RCPT TO:<root>\r\n").startswith("250")
    rewrite(relay, "alias root first@example.com", "alias root second@example.com\nallow 10.0.0.0/8")
    hup(relay)
    relay.wait_log(r"reloaded .*relay\.conf: new sessions and deliveries use it")
    relay.wait_log(r"relay: reloaded: 1 smarthost\(s\)")
    # The old session goes on, under its settings: its alias, its allow.
    assert c.cmd(b"RCPT TO:<root>\r\n").startswith("250")
    assert c.cmd(b"DATA\r\n").startswith("354")
    assert c.cmd(b"Subject: old session\r\n\r\nx\r\n.\r\n").startswith("250")
    c.cmd(b"QUIT\r\n")
    [m] = sink.wait_for(1)
    assert m["rcpts"] == ["first@example.com"], "the session in progress kept the old alias"
    # A new session: loopback is no longer allowed.
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("a@b.c", ["ops@example.com"], b"Subject: x\r\n\r\ny\r\n")
        assert e.value.recipients["ops@example.com"][0] == 554
    # Allowed again, and the new alias is used.
    rewrite(relay, "allow 10.0.0.0/8", "allow 127.0.0.0/8")
    hup(relay, count=2)
    relay.wait_log(r"reloaded ", count=2)
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cron@relay.test", ["root"], b"Subject: new session\r\n\r\ny\r\n")
    msgs = sink.wait_for(2)
    assert msgs[1]["rcpts"] == ["second@example.com"]
    assert relay.proc.poll() is None


def test_broken_config_is_refused_and_the_old_one_stays(sink, make_relay):
    relay = make_relay(sink.port).start()
    with open(relay.conf_path, "a") as f:
        f.write("no_such_key 1\n")
    hup(relay)
    log = relay.wait_log(r"error: reload refused: .*relay\.conf:\d+: .*no_such_key.*; the running settings stay")
    assert "reloaded " not in log
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["ops@example.com"], b"Subject: x\r\n\r\ny\r\n")
    sink.wait_for(1)


def test_listeners_opened_and_closed_and_restart_keys_kept(sink, make_relay):
    relay = make_relay(sink.port).start()
    second = free_port()
    rewrite(relay, f"listen 127.0.0.1:{relay.port}\n",
            f"listen 127.0.0.1:{second}\nworkers 7\n")
    hup(relay)
    relay.wait_log(rf"reload: now listening on 127\.0\.0\.1:{second}")
    relay.wait_log(rf"reload: no longer listening on 127\.0\.0\.1:{relay.port}")
    relay.wait_log(r"warning: reload: workers changed: needs a restart; the running value stays")
    with smtplib.SMTP("127.0.0.1", second) as s:
        s.sendmail("a@b.c", ["ops@example.com"], b"Subject: x\r\n\r\ny\r\n")
    sink.wait_for(1)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", relay.port, timeout=3)


def test_smarthost_change_applies_to_deliveries(sink, make_relay):
    from conftest import Sink
    other = Sink().start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["ops@example.com"], b"Subject: one\r\n\r\ny\r\n")
        sink.wait_for(1)
        rewrite(relay, f"smarthost 127.0.0.1:{sink.port}", f"smarthost 127.0.0.1:{other.port}")
        hup(relay)
        relay.wait_log(r"relay: reloaded: 1 smarthost\(s\)")
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("a@b.c", ["ops@example.com"], b"Subject: two\r\n\r\ny\r\n")
        other.wait_for(1)
        assert len(sink.messages) == 1
    finally:
        other.stop()
