#!/usr/bin/env python3
"""End-to-end benchmark: Postfix's smtp-source through smtp-relayd into smtp-sink,
against smtp-source straight into smtp-sink, side by side in one run (these machines
are shared and noisy: only ratios measured together hold).

End to end means from the first client connection until the sink has received every
message (smtp-sink -M N exits then), not until the client is done: a store-and-forward
relay answers before it delivers. The relay runs in durable mode (every 250 after
DATA is fsynced first, with its spool on the project's own disk), and again in
passthrough mode (no spool: the client gets the smarthost's reply). With
BENCH_POSTFIX=1 (as root), Postfix from the same package runs as a relay to the same
sink in the same rounds, for comparison.

Prints a table of medians and spreads and writes target/bench/e2e.json.
"""
import grp
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "bench-tools")
BINARY = os.environ.get("SMTP_RELAYD_BIN", os.path.join(ROOT, "target", "release", "smtp-relayd"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
POSTFIX = os.environ.get("BENCH_POSTFIX") == "1"
# The static musl build that goes on devices (make bench builds it for this machine).
STATIC = os.environ.get("SMTP_RELAYD_STATIC_BIN",
                        os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release", "smtp-relayd"))

# (message size, concurrent sessions, messages per run): enough that the direct run,
# the shortest, takes about half a second or more.
CASES = [(1024, 1, 4000), (1024, 10, 10000), (100 * 1024, 1, 1000), (100 * 1024, 10, 2000)]


def ensure_tools():
    """smtp-source and smtp-sink from Debian's postfix package, unpacked here (no
    Postfix service is installed or configured)."""
    sbin = os.path.join(TOOLS, "root", "usr", "sbin")
    if not os.path.exists(os.path.join(sbin, "smtp-sink")):
        os.makedirs(TOOLS, exist_ok=True)
        for old in os.listdir(TOOLS):
            if old.endswith(".deb"):
                os.remove(os.path.join(TOOLS, old))
        if subprocess.run(["apt-get", "download", "postfix"], cwd=TOOLS, capture_output=True).returncode != 0:
            # A fresh machine has no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(["apt-get", "download", "postfix"], cwd=TOOLS, check=True, capture_output=True)
        deb = [f for f in os.listdir(TOOLS) if f.endswith(".deb")][0]
        subprocess.run(["dpkg", "-x", deb, "root"], cwd=TOOLS, check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(TOOLS, "root", "usr", "lib", "postfix"))
    return os.path.join(sbin, "smtp-source"), os.path.join(sbin, "smtp-sink"), env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    kib = lambda k: int(fields[k].split()[0])
    return kib("VmRSS"), kib("VmHWM")


def cpu_seconds(pid, reaped=False):
    """utime + stime of `pid`, with its reaped children's (cutime + cstime) if asked."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in stat[11:15 if reaped else 13]) / CLK_TCK


class Relay:
    def __init__(self, sink_port, workers, mode):
        self.dir = tempfile.mkdtemp(prefix="smtp-relayd-bench-", dir=os.path.join(ROOT, "target"))
        self.port = free_port()
        conf = os.path.join(self.dir, "relay.conf")
        with open(conf, "w") as f:
            f.write(f"listen 127.0.0.1:{self.port}\nhostname bench.test\nspool {self.dir}/spool\n"
                    f"smarthost 127.0.0.1:{sink_port}\nsmarthost_tls none\nworkers {workers}\n"
                    f"max_connections 64\nmax_message_size 10M\n"
                    # One client address sends everything here: no per-address limits.
                    f"max_connections_per_ip 64\nrate_limit none\nmax_messages_per_connection none\n"
                    f"mode {mode}\n")
        self.proc = subprocess.Popen([BINARY, "-c", conf], stderr=subprocess.DEVNULL)
        wait_port(self.port)
        time.sleep(0.2)
        self.idle_rss_kib, _ = proc_status(self.proc.pid)
        self.cpu0 = cpu_seconds(self.proc.pid)

    def finish(self, messages):
        cpu = cpu_seconds(self.proc.pid) - self.cpu0
        _, peak = proc_status(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)
        return cpu / messages, peak


# Postfix as a null client relaying everything to the sink: Debian's master.cf services
# that a relay uses, none chrooted (the queue is not in /var/spool/postfix).
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
postlog   unix-dgram n - n - 1 postlogd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
local     unix - n n - - local
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
"""

POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
command_directory = {root}/usr/sbin
daemon_directory = {root}/usr/lib/postfix/sbin
shlib_directory = {root}/usr/lib/postfix
meta_directory = {root}/etc/postfix
mail_owner = daemon
setgid_group = mail
default_privs = nobody
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
myhostname = postfix.bench.test
mydestination =
relayhost = [127.0.0.1]:{sink_port}
mynetworks = 127.0.0.0/8
inet_interfaces = loopback-only
inet_protocols = ipv4
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
"""


def tree_pids(top):
    """`top` and its children (Postfix's daemons are the master's children)."""
    pids = [top]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == top:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def tree_cpu_seconds(top):
    """CPU of `top` and its children, including the children it has reaped."""
    total = 0
    for pid in tree_pids(top):
        try:
            total += cpu_seconds(pid, reaped=pid == top)
        except OSError:
            pass
    return total


def tree_rss_kib(top):
    total = 0
    for pid in tree_pids(top):
        try:
            total += proc_status(pid)[0]
        except (OSError, KeyError):
            pass
    return total


class Postfix:
    """Postfix, unpacked from the same package as smtp-source and smtp-sink, relaying
    to the sink (relayhost) with its defaults otherwise: cleanup fsyncs every queue
    file before smtpd answers 250. The master runs in the foreground as our child."""

    def __init__(self, sink_port):
        self.root = os.path.join(TOOLS, "root")
        self.dir = tempfile.mkdtemp(prefix="postfix-bench-", dir=os.path.join(ROOT, "target"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        conf, queue = os.path.join(self.dir, "conf"), os.path.join(self.dir, "queue")
        os.makedirs(conf)
        os.makedirs(os.path.join(queue, "pid"))
        daemon_uid, mail_gid = pwd.getpwnam("daemon").pw_uid, grp.getgrnam("mail").gr_gid
        for d in ["incoming", "active", "deferred", "defer", "bounce", "trace", "corrupt", "flush", "hold",
                  "saved", "private", "public", "maildrop", "../data"]:
            path = os.path.join(queue, d)
            os.makedirs(path, exist_ok=True)
            os.chown(path, daemon_uid, mail_gid if d in ("public", "maildrop") else -1)
            os.chmod(path, {"public": 0o710, "maildrop": 0o730}.get(d, 0o700))
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN_CF.format(dir=self.dir, root=self.root, sink_port=sink_port))
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(port=self.port))
        open(os.path.join(conf, "dynamicmaps.cf"), "w").close()
        env = {"LD_LIBRARY_PATH": os.path.join(self.root, "usr", "lib", "postfix"), "PATH": "/usr/sbin:/usr/bin:/bin"}
        self.proc = subprocess.Popen([os.path.join(self.root, "usr", "lib", "postfix", "sbin", "master"),
                                      "-c", conf, "-d"], env=env, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        time.sleep(0.5)
        self.idle_rss_kib = tree_rss_kib(self.proc.pid)
        self.cpu0 = tree_cpu_seconds(self.proc.pid)
        self.peak, self.done = self.idle_rss_kib, threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)
        self.sampler.start()

    def sample(self):
        while not self.done.wait(0.2):
            self.peak = max(self.peak, tree_rss_kib(self.proc.pid))

    def finish(self, messages):
        self.done.set()
        self.sampler.join()
        cpu = tree_cpu_seconds(self.proc.pid) - self.cpu0
        self.proc.terminate()
        self.proc.wait(30)
        # The master has told its daemons to go; they are no longer its children to
        # wait for, so give them a moment before their queue goes.
        time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)
        return cpu / messages, self.peak


def run_once(tools, size, sessions, messages, mode):
    """One run: straight into the sink (mode None), through the relay in `mode`, or
    through Postfix (mode "postfix")."""
    source, sink_bin, env = tools
    sink_port = free_port()
    sink = subprocess.Popen([sink_bin, "-u", "nobody", "-M", str(messages), f"127.0.0.1:{sink_port}", "256"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)
    if mode is None:
        relay = None
    elif mode == "postfix":
        relay = Postfix(sink_port)
    else:
        relay = Relay(sink_port, max(4, sessions), mode)
    target = relay.port if relay else sink_port
    t0 = time.monotonic()
    src = subprocess.Popen([source, "-s", str(sessions), "-m", str(messages), "-l", str(size),
                            "-f", "alert@bench.test", "-t", "ops@bench.test", f"127.0.0.1:{target}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A blocking wait, so the time is taken the moment the sink exits: Popen.wait with
    # a timeout polls, in steps that grow to 50 ms, which put every short run on a
    # 50 ms grid (1000 messages of 1 KiB x 1 direct take 0.12-0.19 s). A timer kills a
    # stuck run.
    watchdog = threading.Timer(300, sink.kill)
    watchdog.start()
    try:
        sink.wait()
    finally:
        elapsed = time.monotonic() - t0
        watchdog.cancel()
        src.kill()
        src.wait()
    if sink.returncode != 0:
        raise RuntimeError(f"the sink did not get {messages} messages in 300 s (mode {mode})")
    result = {"seconds": elapsed, "msgs_per_s": messages / elapsed}
    if relay:
        cpu, peak = relay.finish(messages)
        result.update(cpu_ms_per_msg=cpu * 1000, peak_rss_kib=peak, idle_rss_kib=relay.idle_rss_kib)
    return result


def memory_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}


def idle_rss(binary, smarthost_tls, runs=5):
    """Median VmRSS (and its anonymous and file-backed parts) one second after start,
    with the default 4 workers, of `runs` fresh starts."""
    samples = []
    for _ in range(runs):
        d = tempfile.mkdtemp(prefix="smtp-relayd-idle-", dir=os.path.join(ROOT, "target"))
        port = free_port()
        conf = os.path.join(d, "relay.conf")
        with open(conf, "w") as f:
            f.write(f"listen 127.0.0.1:{port}\nhostname idle.test\nspool {d}/spool\n"
                    f"smarthost 127.0.0.1:9\nsmarthost_tls {smarthost_tls}\n")
        p = subprocess.Popen([binary, "-c", conf], stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            time.sleep(1)
            samples.append(memory_kib(p.pid))
        finally:
            p.terminate()
            p.wait(30)
            shutil.rmtree(d, ignore_errors=True)
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def spread(values):
    return (max(values) - min(values)) / statistics.median(values) * 100 if values else 0


def main():
    tools = ensure_tools()
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} missing: run make release")
    if POSTFIX and os.geteuid() != 0:
        sys.exit("BENCH_POSTFIX=1 needs root (Postfix's master starts as root and its daemons run as 'daemon')")
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": f"{platform.machine()}, "
               f"{os.cpu_count()} cores, {platform.release()}", "repeat": REPEAT,
               "binary_bytes": os.path.getsize(BINARY), "cases": []}
    modes = ["durable", "passthrough"] + (["postfix"] if POSTFIX else [])
    print(f"smtp-relayd end-to-end benchmark, {results['machine']}, {REPEAT} runs per case (medians; spread = (max-min)/median)")
    print(f"{'':<22} {'':>13} {'durable':-^58} {'passthrough':-^44}" + (f" {'postfix':-^44}" if POSTFIX else ""))
    print(f"{'case':<22} {'direct msg/s':>13} {'relay msg/s':>12} {'ratio':>7} {'spread':>7} {'CPU ms/msg':>11} {'peak RSS':>9}"
          + f" {'msg/s':>9} {'ratio':>7} {'spread':>7} {'CPU ms':>9} {'peak RSS':>9}" * (len(modes) - 1))
    for size, sessions, messages in CASES:
        runs = {m: [] for m in [None] + modes}
        for _ in range(REPEAT):
            # Interleaved, so that the machine's mood affects all alike.
            for mode in runs:
                runs[mode].append(run_once(tools, size, sessions, messages, mode))
        direct = runs[None]

        def summary(mode):
            ratios = [r["msgs_per_s"] / d["msgs_per_s"] for d, r in zip(direct, runs[mode])]
            return {
                "msgs_per_s": statistics.median(r["msgs_per_s"] for r in runs[mode]),
                "ratio": statistics.median(ratios), "ratio_spread_pct": spread(ratios),
                "cpu_ms_per_msg": statistics.median(r["cpu_ms_per_msg"] for r in runs[mode]),
                "peak_rss_kib": max(r["peak_rss_kib"] for r in runs[mode]),
                "idle_rss_kib": statistics.median(r["idle_rss_kib"] for r in runs[mode]),
            }

        durable = summary("durable")
        case = {
            "size": size, "sessions": sessions, "messages": messages,
            "direct_msgs_per_s": statistics.median(d["msgs_per_s"] for d in direct),
            "relay_msgs_per_s": durable["msgs_per_s"],
            "ratio": durable["ratio"], "ratio_spread_pct": durable["ratio_spread_pct"],
            "cpu_ms_per_msg": durable["cpu_ms_per_msg"],
            "peak_rss_kib": durable["peak_rss_kib"], "idle_rss_kib": durable["idle_rss_kib"],
            "runs": {("direct" if m is None else "relay" if m == "durable" else m): r for m, r in runs.items()},
        }
        for mode in modes[1:]:
            case[mode] = summary(mode)
        results["cases"].append(case)
        name = f"{size // 1024} KiB x {sessions} session{'s' if sessions > 1 else ''}"
        line = (f"{name:<22} {case['direct_msgs_per_s']:>13.0f} {case['relay_msgs_per_s']:>12.0f} {case['ratio']:>6.2f}x"
                f" {case['ratio_spread_pct']:>6.0f}% {case['cpu_ms_per_msg']:>11.3f} {case['peak_rss_kib'] / 1024:>7.1f}Mi")
        for mode in modes[1:]:
            m = case[mode]
            line += (f" {m['msgs_per_s']:>9.0f} {m['ratio']:>6.2f}x {m['ratio_spread_pct']:>6.0f}% {m['cpu_ms_per_msg']:>9.3f}"
                     f" {m['peak_rss_kib'] / 1024:>7.1f}Mi")
        print(line)
    idle = statistics.median(c["idle_rss_kib"] for c in results["cases"])
    print(f"idle RSS after start (this build, bench config): {idle / 1024:.2f} MiB; stripped binary: "
          f"{results['binary_bytes']} bytes")
    results["idle"] = {"glibc, smarthost_tls none": idle_rss(BINARY, "none")}
    if os.path.exists(STATIC):
        results["static_binary_bytes"] = os.path.getsize(STATIC)
        results["idle"]["static musl, smarthost_tls none"] = idle_rss(STATIC, "none")
        results["idle"]["static musl, smarthost_tls starttls (system CAs)"] = idle_rss(STATIC, "starttls")
    if POSTFIX:
        pf_idle = statistics.median(c["postfix"]["idle_rss_kib"] for c in results["cases"])
        print(f"postfix: RSS is the sum over its processes (shared pages counted in each); idle after start "
              f"{pf_idle / 1024:.1f} MiB; CPU includes every daemon, reaped ones too")
    if "static_binary_bytes" in results:
        print(f"static musl binary ({STATIC}): {results['static_binary_bytes']} bytes")
    print("idle RSS, default 4 workers, median of 5 starts (VmRSS = anonymous + file-backed):")
    for name, m in results["idle"].items():
        print(f"  {name:<50} {m['VmRSS'] / 1024:5.2f} MiB = {m['RssAnon']:5.0f} KiB anon + {m['RssFile']:5.0f} KiB file")
    out = os.path.join(ROOT, "target", "bench", "e2e.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
