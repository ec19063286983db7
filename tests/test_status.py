"""`smtp-relayd status`: the screen, --json, and the exit codes of a Nagios plugin,
with and without the daemon running."""
import json
import smtplib
import subprocess
import time

from conftest import RELAYD, Plan, Sink, free_port


def status(relay, *args):
    r = subprocess.run(RELAYD + ["status", "-c", relay.conf_path, *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout


def status_json(relay, *args):
    code, out = status(relay, "--json", *args)
    doc = json.loads(out)
    assert doc["exit"] == code
    return code, doc


def sendmail(relay, rcpt):
    r = subprocess.run(RELAYD + ["sendmail", "-c", relay.conf_path, "-f", "cron@relay.test", rcpt],
                       input=b"Subject: from cron\n\nhello\n", capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_without_daemon_reads_the_spool(sink, make_relay):
    relay = make_relay(sink.port)
    for _ in range(2):
        sendmail(relay, "ops@example.com")
    code, out = status(relay)
    assert code == 2, out
    assert out.startswith("smtp-relayd CRITICAL: daemon not running\n")
    assert "queue:      2 message(s)" in out
    code, doc = status_json(relay)
    assert code == 2 and doc["daemon"]["running"] is False
    assert doc["queue"]["messages"] == 2 and doc["queue"]["bytes"] > 0
    assert 0 <= doc["queue"]["oldest_age_seconds"] < 60
    assert doc["failed"] == 0


def test_running_and_healthy_is_ok(sink, make_relay):
    relay = make_relay(sink.port).start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@example.net", ["ops@example.com"], b"Subject: x\r\n\r\ny\r\n")
    sink.wait_for(1)
    relay.wait_log(r"removed \(delivered\)")
    code, out = status(relay)
    assert code == 0, out
    assert out.startswith("smtp-relayd OK: 0 queued\n")
    assert "daemon:     running, pid " in out
    assert f"smarthost:  127.0.0.1:{sink.port} (127.0.0.1:{sink.port}): ok, last success " in out
    assert "to <ops@example.com> via 127.0.0.1:" in out
    assert "since start: 1 accepted, 1 delivered, 0 deferred, 0 failed" in out
    code, doc = status_json(relay)
    assert code == 0 and doc["state"] == "ok" and doc["problems"] == []
    assert doc["daemon"]["running"] is True and doc["daemon"]["pid"] == relay.proc.pid
    [h] = doc["smarthosts"]
    assert h["failing"] is False and h["last_success"] > 0
    assert doc["last_delivery"]["to"] == "ops@example.com"
    # After a stop: the state the daemon saved, and critical.
    relay.stop()
    code, out = status(relay)
    assert code == 2 and "daemon:     not running; stopped " in out
    assert "(as the daemon last saw it)" in out


def test_old_mail_warns_then_is_critical(make_relay):
    # The smarthost answers, and defers the recipient: the host is fine, the mail old.
    sink = Sink(plan=Plan(rcpt_default=["451 4.2.1 try later"])).start()
    try:
        relay = make_relay(sink.port, retry_min="1h", retry_max="1h").start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("cam@example.net", ["ops@example.com"], b"Subject: x\r\n\r\ny\r\n")
        relay.wait_log(r"status=deferred")
        time.sleep(2.2)
        assert status(relay)[0] == 0
        code, out = status(relay, "--warn-age", "1s")
        assert code == 1 and out.startswith("smtp-relayd WARNING: oldest queued message is ")
        code, doc = status_json(relay, "--warn-age", "1s", "--crit-age", "2s")
        assert code == 2 and doc["state"] == "critical"
        assert doc["queue"]["messages"] == 1
    finally:
        sink.stop()


def test_failed_mail_warns(make_relay):
    sink = Sink(plan=Plan(rcpt={"nobody@x.org": ["550 5.1.1 unknown"]})).start()
    try:
        relay = make_relay(sink.port).start()
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.sendmail("cam@example.net", ["nobody@x.org"], b"Subject: x\r\n\r\ny\r\n")
        relay.wait_log(r"moved to .*/failed/")
        sink.wait_for(1)  # the notice
        code, out = status(relay)
        assert code == 1 and "smtp-relayd WARNING: 1 message(s) in failed/" in out
    finally:
        sink.stop()


def test_failing_smarthost_is_shown_and_critical(make_relay):
    down = free_port()
    relay = make_relay(down, smarthost_connect_timeout="2s").start()
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@example.net", ["ops@example.com"], b"Subject: x\r\n\r\ny\r\n")
    relay.wait_log(r"status=deferred")
    code, out = status(relay)
    assert code == 2, out
    assert f"smarthost:  127.0.0.1:{down} (127.0.0.1:{down}): FAILING since " in out
    assert "last error: 451 4.4.1 cannot connect" in out
    code, doc = status_json(relay)
    [h] = doc["smarthosts"]
    assert h["failing"] is True and h["failures"] >= 1 and h["last_error"].startswith("451 4.4.1")


def test_bad_config_is_unknown(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("no_such_key 1\n")
    r = subprocess.run(RELAYD + ["status", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and r.stdout.startswith("smtp-relayd UNKNOWN: ")
    r = subprocess.run(RELAYD + ["status", "--bogus"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3
