#!/usr/bin/env python3
"""A scriptable SMTP sink: the test upstream and the demo's smarthost.

Standard library only. It records every transaction byte for byte (the raw DATA
wire bytes and the unstuffed content) and can be told what to answer, so tests can
play a smarthost that defers, refuses, hangs up or lacks extensions.

As a program: sink.py --port N [--dir DIR] [--once]  prints each message received.
"""
import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time


class Plan:
    """What the sink answers. Each list is consumed one entry per use; the last
    entry repeats. A reply of "close" hangs up instead of answering; "hang" never
    answers; "delay N REPLY" answers REPLY after N seconds."""

    def __init__(self, **kw):
        self.greeting = kw.get("greeting", ["220 sink.test ESMTP"])
        self.ehlo = kw.get("ehlo", ["250-sink.test", "250-PIPELINING", "250-SIZE 100000000", "250-8BITMIME", "250 SMTPUTF8"])
        self.mail = kw.get("mail", ["250 2.1.0 ok"])
        self.rcpt = kw.get("rcpt", {})  # address -> list of replies
        self.rcpt_default = kw.get("rcpt_default", ["250 2.1.5 ok"])
        self.data = kw.get("data", ["354 go ahead"])
        self.data_end = kw.get("data_end", ["250 2.0.0 Ok: queued"])
        self.helo_only = kw.get("helo_only", False)
        # An ssl.SSLContext: STARTTLS is answered with starttls_reply and the
        # connection upgraded (advertise it in `ehlo`).
        self.tls_context = kw.get("tls_context")
        self.starttls_reply = kw.get("starttls_reply", "220 2.0.0 ready to start TLS")

    @staticmethod
    def take(lst):
        return lst.pop(0) if len(lst) > 1 else lst[0]


class Sink:
    def __init__(self, host="127.0.0.1", port=0, plan=None, out_dir=None, verbose=False):
        self.plan = plan or Plan()
        self.messages = []  # dicts: sender, rcpts, raw, content
        self.sessions = 0
        # Sessions open now, and the most ever open at once.
        self.active = 0
        self.max_active = 0
        self.tls_sessions = 0
        self.commands = []
        self.out_dir = out_dir
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        self.verbose = verbose
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            # Replies to a pipelined MAIL/RCPT/DATA are three small writes: with Nagle
            # the second waits for the ACK of the first, which the client delays (40 ms),
            # and the sink took 22 messages a second. Real servers write such replies
            # together or without delay.
            disable_nagle_algorithm = True

            def handle(self):
                with sink.lock:
                    sink.active += 1
                    sink.max_active = max(sink.max_active, sink.active)
                try:
                    sink.session(self.request, self.rfile, self.wfile)
                finally:
                    with sink.lock:
                        sink.active -= 1

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            # socketserver's default backlog is 5. A relay with 32 workers opens 32
            # connections at once; with 5, the kernel drops the handshake's last ACK
            # and the connection waits for a SYN-ACK retransmit (1 s, 3 s, 7 s, 15 s)
            # longer than the relay waits for the greeting. Real MTAs listen with 100+.
            request_queue_size = 128

        self.server = Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count, timeout=30):
        deadline = time.time() + timeout
        with self.cond:
            while len(self.messages) < count:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"sink has {len(self.messages)} messages, wanted {count}")
                self.cond.wait(left)
            return list(self.messages)

    def session(self, sock, rfile, wfile):
        plan = self.plan
        with self.lock:
            self.sessions += 1

        def say(line):
            if line == "close":
                raise ConnectionAbortedError
            if line == "hang":
                time.sleep(3600)
            if line.startswith("delay "):
                _, seconds, line = line.split(" ", 2)
                time.sleep(float(seconds))
            out.write(line.encode() + b"\r\n")
            out.flush()

        out = wfile
        try:
            say(Plan.take(plan.greeting))
            sender, rcpts = None, []
            while True:
                line = rfile.readline(4096)
                if not line:
                    return
                with self.lock:
                    self.commands.append(line)
                cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    if plan.helo_only:
                        say("502 5.5.1 EHLO not supported")
                    else:
                        for l in plan.ehlo:
                            say(l)
                elif verb == "HELO":
                    say("250 sink.test")
                elif verb == "MAIL":
                    r = Plan.take(plan.mail)
                    sender = cmd[10:].split(">")[0].lstrip("<") if r.startswith("2") else None
                    rcpts = []
                    say(r)
                elif verb == "RCPT":
                    addr = cmd[8:].split(">")[0].lstrip("<")
                    replies = plan.rcpt.get(addr, plan.rcpt_default)
                    r = Plan.take(replies)
                    if r.startswith("2") and sender is not None:
                        rcpts.append(addr)
                    say(r)
                elif verb == "DATA":
                    if sender is None or not rcpts:
                        say("503 5.5.1 need RCPT")
                        continue
                    say(Plan.take(plan.data))
                    raw = bytearray()
                    while not (raw.endswith(b"\r\n.\r\n") or raw == b".\r\n"):
                        chunk = rfile.readline(1 << 20)
                        if not chunk:
                            return
                        raw += chunk
                    wire = bytes(raw[:-3])  # without the final ".\r\n"
                    lines = wire.split(b"\r\n")[:-1]
                    content = b"".join((l[1:] if l.startswith(b".") else l) + b"\r\n" for l in lines)
                    r = Plan.take(plan.data_end)
                    final = r.split(" ", 2)[2] if r.startswith("delay ") else r
                    if final.startswith("2"):
                        self.record(sender, rcpts, wire, content)
                    say(r)
                    sender, rcpts = None, []
                elif cmd.upper() == "STARTTLS":
                    say(plan.starttls_reply)
                    if plan.tls_context is None or not plan.starttls_reply.startswith("220"):
                        continue
                    sock = plan.tls_context.wrap_socket(sock, server_side=True)
                    rfile, out = sock.makefile("rb"), sock.makefile("wb")
                    with self.lock:
                        self.tls_sessions += 1
                    sender, rcpts = None, []
                elif verb == "RSET":
                    sender, rcpts = None, []
                    say("250 2.0.0 ok")
                elif verb == "NOOP":
                    say("250 2.0.0 ok")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    return
                else:
                    say("500 5.5.2 unknown")
        except (ConnectionError, OSError):
            return

    def record(self, sender, rcpts, wire, content):
        msg = {"sender": sender, "rcpts": list(rcpts), "wire": wire, "content": content}
        with self.cond:
            self.messages.append(msg)
            n = len(self.messages)
            self.cond.notify_all()
        if self.out_dir:
            base = os.path.join(self.out_dir, f"msg{n}")
            with open(base + ".eml", "wb") as f:
                f.write(content)
            with open(base + ".json", "w") as f:
                json.dump({"sender": sender, "rcpts": rcpts}, f)
        if self.verbose:
            print(f"--- sink: message {n}: MAIL FROM:<{sender}> RCPT TO:{' '.join('<%s>' % r for r in rcpts)}")
            sys.stdout.write(content.decode("utf-8", "replace").replace("\r\n", "\n"))
            print("--- end of message")
            sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dir")
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages")
    args = ap.parse_args()
    sink = Sink(port=args.port, out_dir=args.dir, verbose=True).start()
    print(f"sink listening on 127.0.0.1:{sink.port}", flush=True)
    try:
        if args.count:
            sink.wait_for(args.count, timeout=3600)
            time.sleep(0.2)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
