#!/usr/bin/env bash
# The quick-start demo: a local sink as the smarthost, smtp-relayd in front of it on
# loopback, one message sent through it with Python's smtplib, and what arrived printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SMTP_RELAYD_BIN:-target/debug/smtp-relayd}
work=$(mktemp -d)
relay_pid=''
sink_pid=''
cleanup() {
    if [ -n "$relay_pid" ]; then kill "$relay_pid" 2>/dev/null || true; fi
    if [ -n "$sink_pid" ]; then kill "$sink_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
relay_port=$(free_port)

python3 tests/sink.py --port "$sink_port" --count 1 > "$work/sink.out" 2>&1 &
sink_pid=$!
for _ in $(seq 100); do
    grep -q "sink listening" "$work/sink.out" 2>/dev/null && break
    sleep 0.1
done
cat > "$work/relay.conf" <<CONF
listen 127.0.0.1:$relay_port
hostname relay.demo
spool $work/spool
smarthost 127.0.0.1:$sink_port
smarthost_tls none
CONF
echo "== config ($work/relay.conf):"
cat "$work/relay.conf"
"$bin" -c "$work/relay.conf" 2> "$work/relay.log" &
relay_pid=$!

python3 - "$relay_port" <<'PY'
import smtplib, sys, time
port = int(sys.argv[1])
for _ in range(100):
    try:
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("smtp-relayd did not start")
msg = (b"From: camera1@example.net\r\nTo: ops@example.com\r\nSubject: motion detected\r\n\r\n"
       b"Motion detected at the back door.\r\n.a line that starts with a dot\r\n")
refused = s.sendmail("camera1@example.net", ["ops@example.com"], msg)
s.quit()
print("== sent one message through smtp-relayd on port %d; refused: %s" % (port, refused or "none"))
PY

for _ in $(seq 100); do
    kill -0 "$sink_pid" 2>/dev/null || break
    sleep 0.1
done
echo "== what the smarthost (local sink) received:"
cat "$work/sink.out"
sleep 0.2
echo "== smtp-relayd log:"
cat "$work/relay.log"
grep -q "status=sent" "$work/relay.log"
echo "== demo OK: relayed end to end"
