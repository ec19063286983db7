#!/usr/bin/env python3
"""End-to-end benchmark: Postfix's smtp-source through smtp-relayd into smtp-sink,
against smtp-source straight into smtp-sink, side by side in one run (these machines
are shared and noisy: only ratios measured together hold).

End to end means from the first client connection until the sink has received every
message (smtp-sink -M N exits then), not until the client is done: a store-and-forward
relay answers before it delivers. The relay runs in durable mode (every 250 after
DATA is fsynced first, with its spool on the project's own disk), and again in
passthrough mode (no spool: the client gets the smarthost's reply).

Prints a table of medians and spreads and writes target/bench/e2e.json.
"""
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "bench-tools")
BINARY = os.environ.get("SMTP_RELAYD_BIN", os.path.join(ROOT, "target", "release", "smtp-relayd"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
# The static musl build that goes on devices (make bench builds it for this machine).
STATIC = os.environ.get("SMTP_RELAYD_STATIC_BIN",
                        os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release", "smtp-relayd"))

# (message size, concurrent sessions, messages per run)
CASES = [(1024, 1, 1000), (1024, 10, 4000), (100 * 1024, 1, 600), (100 * 1024, 10, 1200)]


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


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLK_TCK


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


def run_once(tools, size, sessions, messages, mode):
    """One run: straight into the sink (mode None) or through the relay in `mode`."""
    source, sink_bin, env = tools
    sink_port = free_port()
    sink = subprocess.Popen([sink_bin, "-u", "nobody", "-M", str(messages), f"127.0.0.1:{sink_port}", "256"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(sink_port)
    relay = Relay(sink_port, max(4, sessions), mode) if mode else None
    target = relay.port if relay else sink_port
    t0 = time.monotonic()
    src = subprocess.Popen([source, "-s", str(sessions), "-m", str(messages), "-l", str(size),
                            "-f", "alert@bench.test", "-t", "ops@bench.test", f"127.0.0.1:{target}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sink.wait(300)
    finally:
        elapsed = time.monotonic() - t0
        src.kill()
        src.wait()
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
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "machine": f"{platform.machine()}, "
               f"{os.cpu_count()} cores, {platform.release()}", "repeat": REPEAT,
               "binary_bytes": os.path.getsize(BINARY), "cases": []}
    print(f"smtp-relayd end-to-end benchmark, {results['machine']}, {REPEAT} runs per case (medians; spread = (max-min)/median)")
    print(f"{'':<22} {'':>13} {'durable':-^58} {'passthrough':-^44}")
    print(f"{'case':<22} {'direct msg/s':>13} {'relay msg/s':>12} {'ratio':>7} {'spread':>7} {'CPU ms/msg':>11} {'peak RSS':>9}"
          f" {'msg/s':>9} {'ratio':>7} {'spread':>7} {'CPU ms':>9} {'peak RSS':>9}")
    for size, sessions, messages in CASES:
        direct, relay, passthrough = [], [], []
        for _ in range(REPEAT):
            # Interleaved, so that the machine's mood affects all alike.
            direct.append(run_once(tools, size, sessions, messages, None))
            relay.append(run_once(tools, size, sessions, messages, "durable"))
            passthrough.append(run_once(tools, size, sessions, messages, "passthrough"))
        ratios = [r["msgs_per_s"] / d["msgs_per_s"] for d, r in zip(direct, relay)]
        pt_ratios = [p["msgs_per_s"] / d["msgs_per_s"] for d, p in zip(direct, passthrough)]
        case = {
            "size": size, "sessions": sessions, "messages": messages,
            "direct_msgs_per_s": statistics.median(d["msgs_per_s"] for d in direct),
            "relay_msgs_per_s": statistics.median(r["msgs_per_s"] for r in relay),
            "ratio": statistics.median(ratios), "ratio_spread_pct": spread(ratios),
            "cpu_ms_per_msg": statistics.median(r["cpu_ms_per_msg"] for r in relay),
            "peak_rss_kib": max(r["peak_rss_kib"] for r in relay),
            "idle_rss_kib": statistics.median(r["idle_rss_kib"] for r in relay),
            "passthrough": {
                "msgs_per_s": statistics.median(p["msgs_per_s"] for p in passthrough),
                "ratio": statistics.median(pt_ratios), "ratio_spread_pct": spread(pt_ratios),
                "cpu_ms_per_msg": statistics.median(p["cpu_ms_per_msg"] for p in passthrough),
                "peak_rss_kib": max(p["peak_rss_kib"] for p in passthrough),
            },
            "runs": {"direct": direct, "relay": relay, "passthrough": passthrough},
        }
        results["cases"].append(case)
        name = f"{size // 1024} KiB x {sessions} session{'s' if sessions > 1 else ''}"
        pt = case["passthrough"]
        print(f"{name:<22} {case['direct_msgs_per_s']:>13.0f} {case['relay_msgs_per_s']:>12.0f} {case['ratio']:>6.2f}x"
              f" {case['ratio_spread_pct']:>6.0f}% {case['cpu_ms_per_msg']:>11.3f} {case['peak_rss_kib'] / 1024:>7.1f}Mi"
              f" {pt['msgs_per_s']:>9.0f} {pt['ratio']:>6.2f}x {pt['ratio_spread_pct']:>6.0f}% {pt['cpu_ms_per_msg']:>9.3f}"
              f" {pt['peak_rss_kib'] / 1024:>7.1f}Mi")
    idle = statistics.median(c["idle_rss_kib"] for c in results["cases"])
    print(f"idle RSS after start (this build, bench config): {idle / 1024:.2f} MiB; stripped binary: "
          f"{results['binary_bytes']} bytes")
    results["idle"] = {"glibc, smarthost_tls none": idle_rss(BINARY, "none")}
    if os.path.exists(STATIC):
        results["static_binary_bytes"] = os.path.getsize(STATIC)
        results["idle"]["static musl, smarthost_tls none"] = idle_rss(STATIC, "none")
        results["idle"]["static musl, smarthost_tls starttls (system CAs)"] = idle_rss(STATIC, "starttls")
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
