#!/usr/bin/env python3
"""Soak: steady traffic for a long time while the smarthost flaps, then the books.

The relay runs on a normal spool; SMTP clients and `sendmail` send all the while.
The smarthost (tests/sink.py) changes every phase between up, down (it hangs up at
once), slow (a second per reply), deferring (451) and refusing (554: those go to
failed/, and `retry-failed` brings them back later). Half way, the relay is killed
with SIGKILL and started again (unless --no-crash).

Every few seconds it samples the daemon's RSS, open descriptors, threads and spool
files. At the end (smarthost up, `retry-failed all`, the queue drained, the relay
idle) it checks:
  - every acknowledged message was delivered exactly once, except that one
    delivered both before and after the crash may be there twice (at least once);
  - nothing was delivered that no client sent;
  - descriptors and spool files are back to where they were at the start;
  - RSS: the least-squares slope of the samples after the first fifth (KB/min) is
    printed, and the end (idle) may not exceed the start (idle, after a warm-up)
    by more than --rss-slack KB plus 1 KB per message of the largest backlog
    (queue/ and failed/) seen: the scheduler holds every queued id.

As a program (`make soak`):  soak.py [--minutes M] [--rate R] [--phase S] [--no-crash]
"""
import argparse
import os
import random
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

MODES = ("up", "down", "up", "slow", "deferring", "up", "refusing")


class TimedSink(Sink):
    def record(self, sender, rcpts, wire, content):
        super().record(sender, rcpts, wire, content)
        with self.lock:
            self.messages[-1]["time"] = time.time()


def set_mode(plan, mode):
    # Down: new connections are dropped at once, and so is a session in progress
    # at its next transaction.
    plan.mail = ["close"] if mode == "down" else ["250 2.1.0 ok"]
    plan.greeting = ["close"] if mode == "down" else ["delay 1 220 sink.test ESMTP"] if mode == "slow" \
        else ["220 sink.test ESMTP"]
    plan.rcpt_default = ["451 4.3.2 try again later"] if mode == "deferring" else ["250 2.1.5 ok"]
    plan.data_end = ["554 5.7.1 refused by policy"] if mode == "refusing" else \
        ["delay 1 250 2.0.0 Ok: queued"] if mode == "slow" else ["250 2.0.0 Ok: queued"]


def proc_figures(pid):
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    return {"rss_kb": int(st["VmRSS"].split()[0]), "threads": int(st["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def spool_counts(spool):
    out = {}
    for area in ("tmp", "queue", "failed", "corrupt"):
        names = os.listdir(os.path.join(spool, area))
        out[area] = len(names)
        if area == "tmp":
            out["pool"] = sum(n.startswith("free.") for n in names)
    return out


def slope_kb_per_min(samples):
    """Least squares over (seconds, kb)."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    sxy = sum((t - mx) * (v - my) for t, v in samples)
    return sxy / sxx * 60 if sxx else 0.0


def soak(seconds, rate=20.0, phase=None, crash=True, rss_slack_kb=4096, work=None, say=print, seed=1):
    work = work or tempfile.mkdtemp(prefix="soak-")
    rng = random.Random(seed)
    phase = phase or max(5.0, seconds / 12)
    plan = Plan()
    sink = TimedSink(plan=plan).start()
    # rate_limit none: the default (1000 per 10 minutes per address) would hold the
    # clients, which all come from 127.0.0.1, to under 2 a second.
    relay = Relay(work, sink.port, retry_min="1s", retry_max="3s", smarthost_timeout="10s", workers="4",
                  rate_limit="none")
    tools = link_tools(os.path.join(work, "bin"), ["sendmail"])
    relay.start()
    sent, acked, lock = {}, {}, threading.Lock()
    counter = [0]
    stop = threading.Event()

    def new_message(r):
        with lock:
            counter[0] += 1
            n = counter[0]
        body = "".join(f"line {i} of soak message {n} {'x' * r.randrange(70)}\r\n"
                       for i in range(r.choice((3, 20, 200, 1500))))
        msg = f"From: cam@x.test\r\nTo: ops@x.test\r\nSubject: soak {n}\r\nX-Test-Id: {n}\r\n\r\n{body}".encode()
        with lock:
            sent[n] = msg
        return n, msg

    def smtp_client(r, share):
        interval = share / rate
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as s:
                    for _ in range(r.randrange(1, 20)):
                        if stop.is_set():
                            break
                        t = time.time()
                        n, msg = new_message(r)
                        s.sendmail("cam@x.test", ["ops@x.test"], msg)
                        with lock:
                            acked[n] = t
                        time.sleep(max(0.0, interval - (time.time() - t)))
            except (OSError, smtplib.SMTPException):
                time.sleep(0.2)

    def sendmail_client(r):
        env = dict(os.environ, SMTP_RELAYD_CONFIG=relay.conf_path)
        while not stop.wait(2.0):
            n, msg = new_message(r)
            p = subprocess.run([os.path.join(tools, "sendmail"), "-i", "ops@x.test"], input=msg.replace(b"\r\n", b"\n"),
                               capture_output=True, env=env, timeout=60)
            if p.returncode == 0:
                with lock:
                    acked[n] = time.time()

    # The start's figures: idle, after a warm-up message through every path.
    set_mode(plan, "up")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@x.test", ["ops@x.test"], b"Subject: warm-up\r\n\r\nwarm\r\n")
    sink.wait_for(1)
    time.sleep(3)
    start = dict(proc_figures(relay.proc.pid), **spool_counts(relay.spool))
    say(f"soak: start {start}")
    threads = [threading.Thread(target=smtp_client, args=(random.Random(seed * 10 + i), 2), daemon=True)
               for i in range(2)]
    threads.append(threading.Thread(target=sendmail_client, args=(random.Random(seed * 10 + 9),), daemon=True))
    for t in threads:
        t.start()
    t0 = time.time()
    samples, crash_at, modes, backlog = [], None, [], 0
    next_phase = t0
    while time.time() - t0 < seconds:
        now = time.time()
        if now >= next_phase:
            mode = MODES[len(modes) % len(MODES)] if len(modes) < len(MODES) else rng.choice(MODES)
            set_mode(plan, mode)
            modes.append(mode)
            next_phase = now + phase
        if crash and crash_at is None and now - t0 >= seconds / 2:
            crash_at = time.time()
            relay.kill9()
            relay.start()
            say(f"soak: killed and restarted at {crash_at - t0:.0f} s")
        try:
            f = proc_figures(relay.proc.pid)
            samples.append((now - t0, f["rss_kb"]))
            c = spool_counts(relay.spool)
            backlog = max(backlog, c["queue"] + c["failed"])
            if len(samples) % 6 == 1:
                say(f"soak: {now - t0:5.0f} s  {modes[-1]:9}  rss {f['rss_kb']} KB  fds {f['fds']}  "
                    f"threads {f['threads']}  {spool_counts(relay.spool)}  acked {len(acked)}  "
                    f"delivered {len(sink.messages)}")
        except (OSError, KeyError):
            pass
        time.sleep(min(5.0, max(0.1, seconds / 60)))
    stop.set()
    for t in threads:
        t.join(60)
    # The books: smarthost up, failed ones back, the queue drained, the relay idle.
    set_mode(plan, "up")
    want = set(acked)
    # It may take a while (a slow disk, thousands in failed/); it gives up after 120 s
    # without a delivery.
    deadline, seen = time.time() + 120, -1
    while time.time() < deadline:
        subprocess.run(RELAYD + ["queue", "-c", relay.conf_path, "retry-failed", "all"], capture_output=True)
        got = {test_number(m["content"]) for m in sink.messages if m["sender"] != ""}
        c = spool_counts(relay.spool)
        if want <= got and c["queue"] == 0 and c["failed"] == 0 and c["tmp"] == c["pool"]:
            break
        if len(sink.messages) > seen:
            seen, deadline = len(sink.messages), time.time() + 120
        time.sleep(1)
    time.sleep(3)  # smarthost_idle closes the upstream connections
    end = dict(proc_figures(relay.proc.pid), **spool_counts(relay.spool))
    relay.stop()
    sink.stop()
    problems = []
    deliveries = {}
    for m in sink.messages:
        if m["sender"] == "":
            continue  # failure notices of the refusing phases
        n = test_number(m["content"])
        if n is None:
            if b"warm-up" not in m["content"]:
                problems.append(f"delivered, but no client sent it: {m['content'][:200]!r}")
            continue
        if n not in sent or not m["content"].endswith(sent[n]):
            problems.append(f"message {n} delivered damaged or never sent")
        deliveries.setdefault(n, []).append(m["time"])
    duplicates = 0
    for n in want:
        times = deliveries.get(n, [])
        if not times:
            problems.append(f"message {n} was acknowledged and never delivered")
        elif len(times) > 1:
            duplicates += len(times) - 1
            straddles = crash_at is not None and min(times) < crash_at < max(times) and len(times) == 2
            if not straddles:
                problems.append(f"message {n} delivered {len(times)} times (crash at {crash_at}): {times}")
    for n, times in deliveries.items():
        if n not in want and len(times) > 1 and not (crash_at and min(times) < crash_at < max(times)):
            problems.append(f"unacknowledged message {n} delivered {len(times)} times")
    if end["fds"] != start["fds"]:
        problems.append(f"descriptors: {start['fds']} at the start, {end['fds']} at the end")
    for area in ("queue", "failed", "corrupt"):
        if end[area] != 0:
            problems.append(f"{end[area]} file(s) left in {area}/")
    if end["tmp"] != end["pool"] or end["pool"] > 64:
        problems.append(f"tmp/ holds {end['tmp']} files, {end['pool']} of them the pool's")
    # The scheduler holds every queued id (and the drain puts all of failed/ back at
    # once), so the high-water mark follows the largest backlog: 1 KB a message is
    # allowed for that, beyond the slack.
    allowed = start["rss_kb"] + rss_slack_kb + backlog
    if end["rss_kb"] > allowed:
        problems.append(f"RSS grew from {start['rss_kb']} KB to {end['rss_kb']} KB "
                        f"(allowed {allowed} KB with a backlog of {backlog})")
    later = [s for s in samples if s[0] >= seconds / 5]
    if crash_at is not None:
        later = [s for s in later if s[0] >= crash_at - t0 + 10]
    figures = dict(seconds=round(time.time() - t0), sent=len(sent), acknowledged=len(want),
                   deliveries=sum(len(v) for v in deliveries.values()), duplicates=duplicates,
                   modes=len(modes), crash=crash_at is not None,
                   rss_start_kb=start["rss_kb"], rss_end_kb=end["rss_kb"],
                   rss_max_kb=max((v for _, v in samples), default=0),
                   rss_slope_kb_per_min=round(slope_kb_per_min(later), 1), backlog_max=backlog,
                   fds_start=start["fds"], fds_end=end["fds"],
                   spool_start=start["queue"] + start["failed"] + start["corrupt"] + start["tmp"],
                   spool_end=end["queue"] + end["failed"] + end["corrupt"] + end["tmp"],
                   pool_end=end["pool"], threads_start=start["threads"], threads_end=end["threads"],
                   problems=problems)
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=20, help="SMTP messages a second (sendmail adds one per 2 s)")
    ap.add_argument("--phase", type=float, default=60, help="seconds between smarthost changes")
    ap.add_argument("--no-crash", action="store_true")
    ap.add_argument("--rss-slack", type=int, default=4096, help="KB the idle RSS may grow")
    a = ap.parse_args()
    f = soak(a.minutes * 60, a.rate, a.phase, not a.no_crash, a.rss_slack, say=lambda s: print(s, flush=True))
    problems = f.pop("problems")
    print("soak: " + ", ".join(f"{k} {v}" for k, v in f.items()))
    for p in problems[:50]:
        print("  " + p)
    print(f"soak: {'FAILED, %d problem(s)' % len(problems) if problems else 'ok'}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
