"""Running on a device: systemd readiness, syslog, dropping root."""
import os
import re
import signal
import smtplib
import socket
import tempfile
import time

import pytest

from conftest import free_port


def datagram_socket(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(15)
    return s


def test_sd_notify_ready_after_bind_and_stopping(sink, make_relay, tmp_path):
    notify = datagram_socket(str(tmp_path / "notify"))
    relay = make_relay(sink.port)
    relay.start(wait=False, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    msg = notify.recv(4096).decode()
    assert msg.startswith("READY=1\n") and f"127.0.0.1:{relay.port}" in msg
    # Ready means the port is bound: a client is greeted at once.
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as s:
        assert s.noop()[0] == 250
    relay.proc.send_signal(signal.SIGTERM)
    # STATUS= lines may come before it (see the next test).
    while (msg := notify.recv(4096)).startswith(b"STATUS="):
        pass
    assert msg == b"STOPPING=1"
    assert relay.proc.wait(20) == 0


def test_sd_notify_status_tells_the_queue_and_a_failing_smarthost(make_relay, tmp_path):
    """STATUS= follows the queue and the smarthost's health, as `systemctl status`
    shows it."""
    notify = datagram_socket(str(tmp_path / "notify"))
    down = free_port()
    relay = make_relay(down, retry_min="1h", retry_max="1h", smarthost_connect_timeout="2s")
    relay.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    seen = []

    def until(pattern, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                seen.append(notify.recv(4096).decode())
            except socket.timeout:
                continue
            if re.search(pattern, seen[-1]):
                return seen[-1]
        raise AssertionError(f"no {pattern!r} in {seen}")

    until(r"^STATUS=0 queued; 0 delivered since start$")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: s\r\n\r\nx\r\n")
    line = until(rf"^STATUS=1 queued, oldest \d+s, 127\.0\.0\.1:{down} failing since \d\d:\d\d$")
    assert "delivered since start" not in line
    relay.stop()


def test_sd_notify_abstract_socket(sink, make_relay):
    name = f"smtp-relayd-test-{os.getpid()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + name)
    notify.settimeout(15)
    relay = make_relay(sink.port)
    relay.start(wait=False, env={"NOTIFY_SOCKET": "@" + name})
    assert notify.recv(4096).startswith(b"READY=1")


def test_syslog_lines_reach_dev_log(sink, make_relay, tmp_path):
    log_socket = datagram_socket(str(tmp_path / "devlog"))
    relay = make_relay(sink.port, log="syslog", syslog_socket=str(tmp_path / "devlog")).start()
    lines = []
    deadline = time.time() + 15
    while time.time() < deadline and not any("started:" in l for l in lines):
        lines.append(log_socket.recv(4096).decode())
    started = [l for l in lines if "started:" in l][0]
    # RFC 3164: <PRI>Mmm dd hh:mm:ss tag[pid]: msg, facility mail (2), severity info (6).
    assert re.match(r"<22>\w{3} [ \d]\d \d\d:\d\d:\d\d smtp-relayd\[\d+\]: started: listening on ", started), started
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: s\r\n\r\nx\r\n")
    while not any("status=sent" in l for l in lines):
        lines.append(log_socket.recv(4096).decode())
    # With `log syslog`, stderr stays quiet.
    assert "status=sent" not in relay.log()


def test_drop_privileges_to_user(sink, make_relay):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    # The spool must be reachable by the unprivileged user: not under pytest's 0700 tmp.
    base = tempfile.mkdtemp(prefix="smtp-relayd-user-")
    os.chmod(base, 0o755)
    relay = make_relay(sink.port, spool=os.path.join(base, "spool"), user="nobody").start()
    with open(f"/proc/{relay.proc.pid}/status") as f:
        status = f.read()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
    assert set(uids) == {"65534"} and set(gids) == {"65534"}, status
    assert re.search(r"^Groups:\s+65534\s*$", status, re.M), status
    relay.wait_log(r"running as nobody \(uid 65534, gid 65534\)")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: unprivileged\r\n\r\nx\r\n")
    sink.wait_for(1)
    assert os.stat(os.path.join(base, "spool", "queue")).st_uid == 65534


def test_unknown_user_refuses_to_start(sink, make_relay):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    relay = make_relay(sink.port, user="no-such-user-here")
    relay.start(wait=False)
    # A configuration error, named by file and line, before anything is bound.
    assert relay.proc.wait(15) == 78
    assert f"{relay.conf_path}:" in relay.log()
    assert "user 'no-such-user-here' is not in /etc/passwd" in relay.log()


def test_sysvinit_script_starts_and_stops(sink, make_relay):
    """cross/init.d/smtp-relayd with start-stop-daemon: start, status, clean stop."""
    import shutil
    import subprocess
    from conftest import BINARY, ROOT, RUNNER
    if RUNNER or shutil.which("start-stop-daemon") is None:
        pytest.skip("needs start-stop-daemon and a native binary")
    relay = make_relay(sink.port)
    script = os.path.join(ROOT, "cross", "init.d", "smtp-relayd")
    env = dict(os.environ, DAEMON=BINARY, CONF=relay.conf_path, PIDFILE=os.path.join(relay.dir, "pid"))
    run = lambda action: subprocess.run(["sh", script, action], env=env, capture_output=True, text=True, timeout=60)
    assert run("start").returncode == 0
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as s:
                s.sendmail("a@b.c", ["d@e.f"], b"Subject: init.d\r\n\r\nx\r\n")
            break
        except OSError:
            time.sleep(0.1)
    sink.wait_for(1)
    status = run("status")
    assert status.returncode == 0 and "running" in status.stdout
    pid = int(open(env["PIDFILE"]).read())
    assert run("stop").returncode == 0
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert run("status").returncode == 3


def test_panic_in_one_session_is_survived(sink, make_relay, tmp_path):
    """An unwinding build (dev profile: unwinding and overflow checks, as OpenWrt
    builds): a panicking session is logged, only its connection is lost."""
    import subprocess
    from conftest import ROOT, RUNNER, Client
    if RUNNER:
        pytest.skip("builds a native binary with the fault-injection feature")
    target_dir = os.path.join(ROOT, "target", "fault-injection")
    subprocess.run(["cargo", "build", "--features", "fault-injection", "--target-dir", target_dir],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    binary = os.path.join(target_dir, "debug", "smtp-relayd")
    relay = make_relay(sink.port, workers=1)
    relay.proc = subprocess.Popen([binary, "-c", relay.conf_path], stderr=open(relay.log_path, "ab"))
    relay.logf = open(relay.log_path, "ab")
    relay.wait_log(r"started:")
    c = Client(relay.port)
    c.send(b"XPANIC\r\n")
    assert c.closed(10)
    relay.wait_log(r"error: worker 0: session panicked; connection dropped")
    # The same (only) worker serves the next client.
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as s:
        s.sendmail("a@b.c", ["d@e.f"], b"Subject: after the panic\r\n\r\nx\r\n")
    sink.wait_for(1)
    assert relay.proc.poll() is None


def test_queue_command_as_root_before_an_unprivileged_daemon(sink, make_relay):
    """A queue command run as root first leaves relay.lock owned by root; the daemon
    that later drops to `nobody` must still hold the relay lock, so that queue
    commands go through it."""
    import subprocess
    from conftest import RELAYD
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = tempfile.mkdtemp(prefix="smtp-relayd-lock-")
    os.chmod(base, 0o755)
    relay = make_relay(sink.port, spool=os.path.join(base, "spool"), user="nobody")
    r = subprocess.run(RELAYD + ["queue", "-c", relay.conf_path, "flush"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "no daemon running" in r.stdout, r
    assert os.stat(os.path.join(base, "spool", "relay.lock")).st_uid == 0
    relay.start()
    r = subprocess.run(RELAYD + ["queue", "-c", relay.conf_path, "flush"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "flushing" in r.stdout, r
    assert "cannot lock" not in relay.log()
