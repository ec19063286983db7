#!/usr/bin/env python3
"""Power cuts under load: the daemon's spool on strictfs (tests/strictfs.py), cut
at seeded random moments or right after a chosen operation, then "rebooted" on
what a disk would hold, again and again; at the end every promise is checked.

Each cut is one round:
  mount strictfs on the image of the last cut (empty at first)
  start smtp-relayd on it (it must start every time)
  load: SMTP clients, `sendmail`, and `queue delete|flush|retry-failed`
  cut (now, after a random delay, or armed: right after the Nth op of a kind)
  SIGKILL everything, unmount
After the last round the relay runs on the survivors until it is done, and:
  - every message that got a 250 (or that sendmail said it queued) was delivered,
    byte for byte (after the relay's Received: line), or is where it belongs: a
    refused one in failed/, a deferred one in queue/, a deleted one nowhere;
  - everything delivered is what a client sent, whole (a duplicate after a cut is
    allowed: delivery is at least once);
  - nothing is in corrupt/, and the relay logged no damaged spool file.

As a program (`make powercut`):  powercut.py [--cuts N] [--seed S] [--policy lose|mix|both]
It prints a line per cut and the figures at the end; exit 1 on a broken promise.
"""
import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from conftest import RELAYD, Relay, link_tools, test_number  # noqa: E402
from sink import Plan, Sink  # noqa: E402

OK, REFUSED, HELD = "ops@x.test", "refused@x.test", "hold@x.test"
OPS = ("fsync", "rename", "unlink", "link", "write", "truncate", "create", "any")


class Broken(AssertionError):
    pass


class StrictMount:
    """One strictfs process over `mnt`, serving `image`."""

    def __init__(self, mnt, image, seed, policy, log):
        self.mnt, self.image = mnt, image
        self.ctl = os.path.join(mnt, ".strictfs")
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "strictfs.py"), mnt, "--image", image,
                                      "--seed", str(seed), "--policy", policy],
                                     stdout=self.logf, stderr=self.logf, stdin=subprocess.DEVNULL)
        deadline = time.time() + 20
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"strictfs did not mount (exit {self.proc.poll()}); see {log}")
            time.sleep(0.02)

    def command(self, text):
        with open(self.ctl, "w") as f:
            f.write(text)

    def state(self):
        with open(self.ctl) as f:
            words = f.read().split()
        return dict(zip(words[::2], words[1::2]))

    def wait_cut(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.state()["state"] == "cut":
                return True
            time.sleep(0.01)
        return False

    def unmount(self):
        for _ in range(100):
            if subprocess.run(["umount", self.mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", self.mnt])
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()


class Ledger:
    """What the clients sent and what they were told."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}      # n -> (kind, rcpts, bytes)
        self.acked = {}     # n -> queue id (or "sendmail")
        self.deleted = set()
        self.next = 0

    def told(self, n, code, reply):
        """Message n got this reply to its DATA: a 250 is a promise."""
        if code == 250:
            m = re.search(rb"queued as ([0-9A-F]{23})", reply)
            with self.lock:
                self.acked[n] = m.group(1).decode() if m else "?"

    def new(self, rng, kind):
        with self.lock:
            self.next += 1
            n = self.next
        size = rng.choice((200, 900, 3000, 20000, 70000, 150000)) + rng.randrange(100)
        rcpts = {"ok": [OK] if rng.random() < 0.7 else [OK, "ops2@x.test"], "refused": [REFUSED],
                 "held": [HELD]}[kind]
        line = hashlib.sha256(str(n).encode()).hexdigest()
        body = b"".join(f"{line[:60]} {i}\r\n".encode() for i in range(size // 64 + 1))
        if rng.random() < 0.1:
            body += b".leading dot\r\n..two\r\n"
        msg = (f"From: cam@x.test\r\nTo: {', '.join(rcpts)}\r\nSubject: power cut {n}\r\n"
               f"X-Test-Id: {n}\r\n\r\n").encode() + body
        with self.lock:
            self.sent[n] = (kind, rcpts, msg)
        return n, rcpts, msg


def pick_kind(rng):
    r = rng.random()
    return "ok" if r < 0.8 else "refused" if r < 0.9 else "held"


class Load:
    """Clients that send until stopped."""

    def __init__(self, relay, ledger, seed, sendmail_dir, clients=4):
        self.relay, self.ledger, self.stop_ = relay, ledger, threading.Event()
        self.threads = [threading.Thread(target=self.smtp, args=(random.Random(seed * 100 + i),), daemon=True)
                        for i in range(clients)]
        self.threads.append(threading.Thread(target=self.sendmail, args=(random.Random(seed * 100 + 50),
                                                                          sendmail_dir), daemon=True))
        self.threads.append(threading.Thread(target=self.queue_commands, args=(random.Random(seed * 100 + 60),),
                                             daemon=True))
        self.procs = set()
        self.errors = []

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def smtp(self, rng):
        while not self.stop_.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.relay.port, timeout=10) as s:
                    s.ehlo()
                    for _ in range(rng.randrange(1, 6)):
                        if self.stop_.is_set():
                            return
                        n, rcpts, msg = self.ledger.new(rng, pick_kind(rng))
                        s.mail("cam@x.test")
                        for r in rcpts:
                            code, _ = s.rcpt(r)
                            if code != 250:
                                raise smtplib.SMTPException(f"rcpt {code}")
                        self.ledger.told(n, *s.data(msg))
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    def sendmail(self, rng, tools):
        env = dict(os.environ, SMTP_RELAYD_CONFIG=self.relay.conf_path)
        while not self.stop_.is_set():
            n, rcpts, msg = self.ledger.new(rng, "ok")
            try:
                p = subprocess.Popen([os.path.join(tools, "sendmail"), "-i"] + rcpts, stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            except OSError:
                return
            self.procs.add(p)
            try:
                p.communicate(msg.replace(b"\r\n", b"\n"), timeout=30)
            except (subprocess.TimeoutExpired, OSError):
                p.kill()
                p.wait()
            self.procs.discard(p)
            if p.returncode == 0:
                with self.ledger.lock:
                    self.ledger.acked[n] = "sendmail"
            time.sleep(rng.random() * 0.2)

    def queue_commands(self, rng):
        while not self.stop_.wait(rng.random() * 0.5):
            with self.ledger.lock:
                held = [(n, q) for n, q in self.ledger.acked.items()
                        if self.ledger.sent[n][0] == "held" and n not in self.ledger.deleted and q != "?"]
            r = rng.random()
            if held and r < 0.4:
                n, q = rng.choice(held)
                args = ["delete", q]
            elif r < 0.7:
                args, n = ["flush"], None
            else:
                args, n = ["retry-failed", "all"], None
            try:
                p = subprocess.Popen(RELAYD + ["queue", "-c", self.relay.conf_path] + args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError:
                return
            self.procs.add(p)
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                continue
            finally:
                self.procs.discard(p)
            if p.returncode == 0 and args[0] == "delete":
                with self.ledger.lock:
                    self.ledger.deleted.add(n)

    def kill(self):
        self.stop_.set()
        for p in list(self.procs):
            try:
                p.kill()
            except OSError:
                pass

    def join(self):
        for t in self.threads:
            t.join(30)


def make_spool(spool):
    """Makes the spool's directories durably: each one, then its parent, fsynced."""
    for d in (spool, *(os.path.join(spool, a) for a in ("tmp", "queue", "failed", "corrupt"))):
        os.mkdir(d, 0o700)
        for path in (d, os.path.dirname(d)):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def spool_files(spool, area):
    d = os.path.join(spool, area)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


class Run:
    def __init__(self, work, seed, policy, clients=4, say=print, extra_conf=None, made_spool=False):
        """`made_spool`: the spool's directories are made (and synced) by the test
        before the first start, as a package's install would, rather than by the
        daemon itself."""
        self.work, self.seed, self.policy, self.say = work, seed, policy, say
        self.made_spool = made_spool
        self.rng = random.Random(seed)
        self.mnt = os.path.join(work, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.image = os.path.join(work, "disk.img")
        self.fslog = os.path.join(work, "strictfs.log")
        self.ledger = Ledger()
        self.clients = clients
        plan = Plan(rcpt={REFUSED: ["550 5.1.1 no such user"], HELD: ["451 4.3.0 try later"]})
        self.sink = Sink(plan=plan).start()
        self.tools = link_tools(os.path.join(work, "bin"), ["sendmail"])
        conf = dict(spool=os.path.join(self.mnt, "spool"), workers="8", smarthost_connections="2")
        conf.update(extra_conf or {})
        self.relay = Relay(work, self.sink.port, **conf)
        self.relay.spool = conf["spool"]
        self.cuts = 0
        self.mount = None

    def round(self, how=None):
        """One round: mount, start, load, cut, kill, unmount. `how`: ("arm", op, n),
        ("after", seconds) or None for a seeded choice."""
        rng = self.rng
        if how is None:
            if rng.random() < 0.5:
                how = ("after", round(rng.uniform(0.05, 2.5), 2))
            else:
                how = ("arm", rng.choice(OPS), rng.randrange(1, 400))
        # The smarthost takes mail, defers all of it, or is slow: a cut finds
        # messages being received, queued, in delivery and being removed.
        sink = rng.choice(("up", "up", "up", "down", "slow"))
        self.set_sink(sink)
        self.mount = StrictMount(self.mnt, self.image, self.seed * 1000 + self.cuts, self.policy, self.fslog)
        try:
            if self.made_spool and self.cuts == 0:
                make_spool(self.relay.spool)
            if how[0] == "arm":
                self.mount.command(f"arm {how[1]} {how[2]}")
            if not self.start_relay():
                how = how + ("(during the start)",)
                self.relay.kill9()
                raise _CutInStart
            load = Load(self.relay, self.ledger, self.seed * 1000 + self.cuts, self.tools, self.clients).start()
            if how[0] == "after":
                time.sleep(how[1])
                self.mount.command("cut")
            elif not self.mount.wait_cut(8):
                self.mount.command("cut")
                how = how + ("(not reached: cut at 8 s)",)
            self.relay.kill9()
            load.kill()
            load.join()
        except _CutInStart:
            pass
        except BaseException:
            self.mount.unmount()
            raise
        self.mount.unmount()
        self.cuts += 1
        with self.ledger.lock:
            acked = len(self.ledger.acked)
        self.say(f"cut {self.cuts}: {' '.join(map(str, how))}, smarthost {sink}; {acked} acknowledged so far")

    def start_relay(self):
        """Starts the relay; False if the power was cut while it started. A start that
        fails otherwise is a broken promise."""
        try:
            self.relay.start()
            return True
        except RuntimeError as e:
            if self.mount.state()["state"] == "cut":
                return False
            raise Broken(f"the relay did not start after {self.cuts} cut(s): {e}")

    def wait_log_or_cut(self, pattern, count, timeout=5):
        """Waits for the relay to log `pattern` `count` times; False at once if the
        power is cut first (or after `timeout`)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(re.findall(pattern, self.relay.log())) >= count:
                return True
            if self.mount.state()["state"] == "cut":
                return False
            time.sleep(0.02)
        return False

    def send(self, kind, rng=None):
        """Sends one message of `kind`; returns its number (acknowledged or not)."""
        rng = rng or self.rng
        n, rcpts, msg = self.ledger.new(rng, kind)
        try:
            with smtplib.SMTP("127.0.0.1", self.relay.port, timeout=20) as s:
                s.ehlo()
                s.mail("cam@x.test")
                for r in rcpts:
                    s.rcpt(r)
                self.ledger.told(n, *s.data(msg))
        except (OSError, smtplib.SMTPException):
            pass
        return n

    def set_sink(self, mode):
        plan = self.sink.plan
        plan.rcpt_default = ["451 4.4.1 down for maintenance"] if mode == "down" else ["250 2.1.5 ok"]
        plan.data_end = ["delay 0.3 250 2.0.0 Ok: queued"] if mode == "slow" else ["250 2.0.0 Ok: queued"]

    def finish(self, timeout=120):
        """Runs the relay on what survived until it is done; returns the figures.
        Raises Broken with every broken promise."""
        self.set_sink("up")
        self.mount = StrictMount(self.mnt, self.image, 0, self.policy, self.fslog)
        try:
            self.relay.start()
            return self.check(timeout)
        finally:
            self.relay.stop()
            self.mount.unmount()
            self.sink.stop()

    def check(self, timeout):
        spool = self.relay.spool
        ledger = self.ledger
        want_delivered = {n for n in ledger.acked if ledger.sent[n][0] == "ok"}
        deadline = time.time() + timeout
        while True:
            got = self.delivered()
            queued = [self.read(spool, "queue", q) for q in spool_files(spool, "queue")]
            busy = [d for d in queued if d is not None and HELD.encode() not in d.split(b"\n\n", 1)[0]]
            if want_delivered <= set(got) and not busy:
                break
            if time.time() > deadline:
                break
            time.sleep(0.2)
        problems = []
        got = self.delivered()
        for n in sorted(want_delivered - set(got)):
            problems.append(f"message {n} got {ledger.acked[n]} and was never delivered")
        for m in self.sink.messages:
            n = test_number(m["content"])
            if m["sender"] == "":
                # A failure notice: about a refused message that a client sent.
                if n is None or n not in ledger.sent or ledger.sent[n][0] != "refused":
                    problems.append(f"a notice about something no client sent: {m['content'][:300]!r}")
                continue
            if n is None or n not in ledger.sent:
                problems.append(f"delivered, but no client sent it: {m['content'][:300]!r}")
                continue
            kind, rcpts, msg = ledger.sent[n]
            if not m["content"].endswith(msg) or not m["content"].startswith(b"Received: "):
                problems.append(f"message {n} delivered damaged: {len(m['content'])} octets, "
                                f"sent {len(msg)}: {m['content'][:200]!r}")
            if kind != "ok" or not set(m["rcpts"]) <= set(rcpts):
                problems.append(f"message {n} ({kind}) delivered to {m['rcpts']}")
        where = {}
        for area in ("queue", "failed", "corrupt"):
            for q in spool_files(spool, area):
                data = self.read(spool, area, q)
                n = test_number(data or b"")
                where.setdefault(n, set()).add(area)
                if area == "corrupt":
                    problems.append(f"corrupt/{q}: {data[:300]!r}")
        for n, q in ledger.acked.items():
            kind = ledger.sent[n][0]
            if kind == "refused" and "failed" not in where.get(n, ()):
                problems.append(f"refused message {n} ({q}) is not in failed/: {where.get(n)}")
            if kind == "held":
                if n in ledger.deleted and where.get(n):
                    problems.append(f"message {n} ({q}) was deleted and is back in {where[n]}")
                if n not in ledger.deleted and "queue" not in where.get(n, ()):
                    problems.append(f"deferred message {n} ({q}) is not in queue/: {where.get(n)}")
        log = self.relay.log()
        for line in log.splitlines():
            if re.search(r"spool file is damaged|moving unknown file|panicked", line):
                problems.append("log: " + line)
        figures = dict(cuts=self.cuts, sent=len(ledger.sent), acknowledged=len(ledger.acked),
                       delivered=len(self.sink.messages), checked=len(ledger.acked),
                       deleted=len(ledger.deleted), problems=len(problems))
        if problems:
            raise Broken(f"{len(problems)} broken promise(s) after {self.cuts} cuts (seed {self.seed}, "
                         f"policy {self.policy}):\n  " + "\n  ".join(problems[:40]))
        return figures

    def delivered(self):
        out = {}
        for m in list(self.sink.messages):
            n = test_number(m["content"])
            if n is not None and m["sender"] != "":
                out[n] = out.get(n, 0) + 1
        return out

    @staticmethod
    def read(spool, area, name):
        try:
            with open(os.path.join(spool, area, name), "rb") as f:
                return f.read()
        except OSError:
            return None


class _CutInStart(Exception):
    pass


def sweep_point(scenario, k, seed, policy, work):
    """One cut point of a scenario: set up, cut right after the k-th filesystem
    operation from the armed moment on, reboot, finish, check."""
    r = Run(work, seed, policy, say=lambda s: None, made_spool=scenario != "fresh", clients=1)
    r.mount = StrictMount(r.mnt, r.image, seed * 1000 + k, policy, r.fslog)
    try:
        if r.made_spool:
            make_spool(r.relay.spool)
        if scenario == "fresh":
            # A spool the daemon makes itself; the smarthost is down, so what is
            # acknowledged stays queued.
            r.set_sink("down")
            r.mount.command(f"arm any {k}")
            if r.start_relay():
                for _ in range(6):
                    r.send("ok")
        elif scenario in ("reuse", "reuse1"):
            # A delivered message's file is reused by the next one.
            # (The second one's commit syncs queue/, which makes the first one's
            # removal durable: its file may be reused from then on.)
            r.start_relay()
            r.send("ok")
            r.relay.wait_log(r"removed \(delivered\)")
            if scenario == "reuse":
                r.send("ok")
                r.relay.wait_log(r"removed \(delivered\)", count=2)
            time.sleep(0.3)
            r.mount.command(f"arm any {k}")
            for _ in range(2):
                r.send("ok")
        elif scenario == "failed":
            # A refused message moves to failed/, then retry-failed moves it back.
            r.sink.plan.rcpt[REFUSED] = ["delay 0.5 550 5.1.1 no such user"]
            r.start_relay()
            r.mount.command(f"arm any {k}")
            r.send("refused")
            if r.wait_log_or_cut(r"moved to .*failed/", 1):
                subprocess.run(RELAYD + ["queue", "-c", r.relay.conf_path, "retry-failed", "all"],
                               capture_output=True, timeout=20)
                r.wait_log_or_cut(r"moved to .*failed/", 2)
        else:
            raise ValueError(scenario)
        if scenario == "probe":
            return r.mount.state()
        if not r.mount.wait_cut(3):
            r.mount.command("cut")
        if r.relay.proc and r.relay.proc.poll() is None:
            r.relay.kill9()
    except BaseException:
        r.mount.unmount()
        r.sink.stop()
        raise
    r.mount.unmount()
    r.cuts = 1
    return r.finish(timeout=30)


SCENARIOS = ("fresh", "reuse1", "reuse", "failed")


def sweep(scenario, points, seed, policy, say=print):
    """Cuts a scenario after each of its first `points` operations; returns the
    figures, raises Broken at the first cut point that breaks a promise."""
    checked = 0
    for k in range(1, points + 1):
        work = tempfile.mkdtemp(prefix=f"powercut-{scenario}-")
        try:
            f = sweep_point(scenario, k, seed, policy, work)
            checked += f["checked"]
        except Broken as e:
            raise Broken(f"scenario {scenario}, cut after operation {k}, seed {seed}, policy {policy}: {e}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"scenario {scenario} ({policy}, seed {seed}): {points} cut points survived, {checked} messages checked")
    return checked


def run(cuts, seed, policy, work=None, say=print, **kw):
    own = work is None
    work = work or tempfile.mkdtemp(prefix="powercut-")
    try:
        r = Run(work, seed, policy, say=say, **kw)
        for _ in range(cuts):
            r.round()
        return r.finish()
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuts", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", choices=("lose", "mix", "both"), default="both")
    ap.add_argument("--per-run", type=int, default=10, help="cuts per run before the final check")
    ap.add_argument("--sweep-seeds", type=int, default=0,
                    help="then sweep every scenario (a cut after each of its operations) with this many seeds")
    a = ap.parse_args()
    policies = ("lose", "mix") if a.policy == "both" else (a.policy,)
    total = dict(cuts=0, survived=0, checked=0, delivered=0, runs=0, failed_runs=0)
    seed = a.seed
    left = a.cuts
    t0 = time.time()
    while left > 0:
        for policy in policies:
            n = min(a.per_run, left)
            if n <= 0:
                break
            left -= n
            try:
                f = run(n, seed, policy, say=lambda s: print("  " + s, flush=True))
                total["survived"] += n
                total["checked"] += f["checked"]
                total["delivered"] += f["delivered"]
                print(f"run seed {seed} policy {policy}: {n} cuts survived, {f['acknowledged']} acknowledged "
                      f"of {f['sent']} sent, {f['delivered']} deliveries, {f['deleted']} deleted", flush=True)
            except Broken as e:
                total["failed_runs"] += 1
                print(f"run seed {seed} policy {policy}: FAILED\n{e}", flush=True)
            total["cuts"] += n
            total["runs"] += 1
            seed += 1
    sweeps = dict(points=0, survived=0, checked=0, failed=0)
    points = {"fresh": 30, "reuse1": 12, "reuse": 16, "failed": 45}
    for scenario in SCENARIOS:
        for s in range(1, a.sweep_seeds + 1):
            for policy in policies:
                sweeps["points"] += points[scenario]
                try:
                    sweeps["checked"] += sweep(scenario, points[scenario], s, policy)
                    sweeps["survived"] += points[scenario]
                except Broken as e:
                    sweeps["failed"] += 1
                    print(f"FAILED: {e}", flush=True)
    print(f"powercut: {total['survived']}/{total['cuts']} cuts survived in {total['runs']} runs "
          f"({total['failed_runs']} failed), {total['checked']} acknowledged messages checked, "
          f"{total['delivered']} deliveries; sweeps: {sweeps['survived']}/{sweeps['points']} cut points "
          f"survived ({sweeps['failed']} failed), {sweeps['checked']} messages checked; "
          f"{time.time() - t0:.0f} s")
    sys.exit(1 if total["failed_runs"] or sweeps["failed"] else 0)


if __name__ == "__main__":
    main()
