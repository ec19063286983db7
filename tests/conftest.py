"""Fixtures for the integration suite: the real smtp-relayd binary on loopback,
in front of the scriptable sink (tests/sink.py) as its smarthost."""
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sink import Plan, Sink  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.abspath(os.environ.get("SMTP_RELAYD_BIN", os.path.join(ROOT, "target", "debug", "smtp-relayd")))
# A wrapper such as "qemu-aarch64-static" to run a cross-built binary.
RUNNER = os.environ.get("SMTP_RELAYD_RUNNER", "").split()
# The command that runs smtp-relayd: the binary, behind the runner if there is one.
RELAYD = RUNNER + [BINARY]


def link_tools(d, names=("sendmail", "mailq")):
    """Makes `d`/sendmail and `d`/mailq run the binary, as an install links them.
    Under an emulator a link is not enough: a wrapper keeps argv[0]."""
    os.makedirs(d, exist_ok=True)
    for name in names:
        path = os.path.join(d, name)
        if os.path.lexists(path):
            continue
        if RUNNER:
            with open(path, "w") as f:
                f.write(f"#!/bin/sh\nexec {' '.join(RUNNER)} -0 {name} {BINARY} \"$@\"\n")
            os.chmod(path, 0o755)
        else:
            os.symlink(BINARY, path)
    return str(d)


def test_number(data):
    """The number in a test message's `X-Test-Id:` header (power cuts, soak), or None."""
    m = re.search(rb"\r?\nX-Test-Id: (\d+)\r?\n", data)
    return int(m.group(1)) if m else None


test_number.__test__ = False  # a helper, not a test


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """One smtp-relayd process with its own config, spool and log."""

    def __init__(self, tmp_path, smarthost_port, extra="", **conf):
        """`conf` keys are written first, in order; `extra` (raw config text, such as
        named smarthost blocks) after them."""
        self.dir = tmp_path
        self.spool = os.path.join(tmp_path, "spool")
        self.port = conf.pop("port", None) or free_port()
        self.conf_path = os.path.join(tmp_path, "relay.conf")
        self.log_path = os.path.join(tmp_path, "relay.log")
        settings = {
            "listen": f"127.0.0.1:{self.port}",
            "hostname": "relay.test",
            "spool": self.spool,
            "smarthost": f"127.0.0.1:{smarthost_port}",
            "smarthost_tls": "none",
            "retry_min": "1s",
            "retry_max": "2s",
            "smarthost_timeout": "10s",
            "smarthost_idle": "1s",
            "shutdown_grace": "3s",
            # Many tests open several connections from 127.0.0.1 at once; the
            # per-address limits have their own tests (test_policy.py), which pass
            # None to get the daemon's defaults.
            "max_connections_per_ip": "1000",
            # Most tests compare the delivered bytes with what they sent; the added
            # Date and Message-ID have their own tests, which pass None for the default.
            "add_missing_headers": "no",
        }
        settings.update(conf)
        settings = {k: v for k, v in settings.items() if v is not None}
        with open(self.conf_path, "w") as f:
            for k, v in settings.items():
                for item in v if isinstance(v, list) else [v]:
                    f.write(f"{k} {item}\n")
            f.write(extra)
        self.proc = None

    def start(self, wait=True, env=None):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(RELAYD + ["-c", self.conf_path], stderr=self.logf, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, **(env or {})))
        if wait:
            deadline = time.time() + 15
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"smtp-relayd exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                        s.settimeout(5)
                        if s.recv(100).startswith(b"220"):
                            s.sendall(b"QUIT\r\n")
                            break
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError("smtp-relayd did not start listening:\n" + self.log())
        return self

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        if self.proc:
            self.logf.close()
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.logf.close()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=20, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return self.log()
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r} x{count}:\n{self.log()}")

    def files(self, area):
        """The files in a spool area; in tmp/ the emptied files the daemon keeps for
        reuse (free.ID, see pool_sizes) are left out."""
        d = os.path.join(self.spool, area)
        names = sorted(os.listdir(d)) if os.path.isdir(d) else []
        return [n for n in names if not (area == "tmp" and n.startswith("free."))]

    def pool_sizes(self):
        """The sizes of tmp/free.ID, the delivered messages' files kept for reuse."""
        d = os.path.join(self.spool, "tmp")
        return [os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith("free.")]


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mounts a tmpfs of the given size (needs root; skips otherwise), unmounted after."""
    mounted = []

    def mount(size):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)])


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def make_relay(tmp_path):
    relays = []

    def make(smarthost_port, **conf):
        sub = tmp_path / f"r{len(relays)}"
        sub.mkdir()
        r = Relay(str(sub), smarthost_port, **conf)
        relays.append(r)
        return r

    yield make
    for r in relays:
        try:
            r.stop(signal.SIGKILL)
        except Exception:
            pass


@pytest.fixture
def relay(sink, make_relay):
    return make_relay(sink.port).start()


class Client:
    """A raw SMTP client: sends exact bytes, reads replies."""

    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def reply(self):
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"".join(lines).decode("utf-8", "replace")

    def cmd(self, data):
        self.send(data if isinstance(data, bytes) else data.encode() + b"\r\n")
        return self.reply()

    def codes(self, n):
        return [self.reply()[:3] for _ in range(n)]

    def closed(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(100) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


@pytest.fixture
def client_for():
    clients = []

    def make(relay, **kw):
        c = Client(relay.port, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 signed by it, and a rogue self-signed one."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-subj", "/CN=smtp-relayd test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-extfile", "ext.cnf", "-out", "server.pem", cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", "rogue.key", "-out", "rogue.pem", cwd=d)
    # Signed by the CA but valid only from 2099: what a box without a clock sees.
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=127.0.0.1", "-keyout", "future.key", "-out", "future.csr", cwd=d)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text("[ca]\ndefault_ca=test\n[test]\ndatabase=index.txt\nnew_certs_dir=.\n"
                              "serial=serial\ndefault_md=sha256\npolicy=any\n[any]\ncommonName=supplied\n")
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "future.csr",
            "-out", "future.pem", "-startdate", "20990101000000Z", "-enddate", "20991231000000Z",
            "-extfile", "ext.cnf", "-notext", cwd=d)
    fp = subprocess.run(["openssl", "x509", "-in", "server.pem", "-noout", "-fingerprint", "-sha256"],
                        cwd=d, check=True, capture_output=True, text=True).stdout
    return {"dir": d, "ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key"),
            "rogue_cert": str(d / "rogue.pem"), "rogue_key": str(d / "rogue.key"),
            "future_cert": str(d / "future.pem"), "future_key": str(d / "future.key"),
            "fingerprint": "sha256:" + fp.strip().split("=", 1)[1]}


def server_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


__all__ = ["Plan", "Sink", "Relay", "Client", "free_port", "BINARY", "RELAYD", "server_context"]
