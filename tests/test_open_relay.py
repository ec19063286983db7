"""Open-relay checks: nmap's smtp-open-relay script (Debian nmap) against a listener
whose `allow` excludes the scanner's address, and the same rules with smtplib.

The script only runs against the SMTP ports (25, 465, 587), so the listener takes
port 587 on a loopback address of its own (binding it needs root). The scanner
connects from 127.0.0.1; the listener allows only 127.0.0.2."""
import os
import shutil
import smtplib
import subprocess

import pytest

pytestmark = [
    pytest.mark.skipif(shutil.which("nmap") is None, reason="needs nmap"),
    pytest.mark.skipif(os.geteuid() != 0, reason="port 587 needs root"),
]


def nmap_open_relay(host):
    out = subprocess.run(["nmap", "-Pn", "-p", "587", "--script", "smtp-open-relay",
                          "--script-args", "smtp-open-relay.domain=relay.test", host],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_nmap_finds_no_open_relay(sink, make_relay):
    relay = make_relay(sink.port, listen="127.0.0.3:587", port=587, allow="127.0.0.2/32")
    relay.port = 587
    relay.start(wait=False)
    relay.wait_log(r"started: listening")
    out = nmap_open_relay("127.0.0.3")
    assert "Server doesn't seem to be an open relay, all tests failed" in out, out
    # Every relay attempt the script made was refused at RCPT, none accepted.
    log = relay.log()
    assert log.count("reject: RCPT from [127.0.0.1]: 554 5.7.1 Relay access denied") >= 10, log
    assert "250 2.1.5" not in log and relay.files("queue") == []

    # The same rules, checked directly: refused from 127.0.0.1, relayed from 127.0.0.2.
    with smtplib.SMTP("127.0.0.3", 587) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("a@example.net", ["victim@example.org"], b"Subject: x\r\n\r\nx\r\n")
        assert list(e.value.recipients.values())[0][0] == 554
    s = smtplib.SMTP(source_address=("127.0.0.2", 0))
    s.connect("127.0.0.3", 587)
    s.sendmail("a@example.net", ["ops@example.org"], b"Subject: x\r\n\r\nx\r\n")
    s.quit()
    [m] = sink.wait_for(1)
    assert m["rcpts"] == ["ops@example.org"]


def test_nmap_reports_a_relay_that_allows_it(sink, make_relay):
    """The control: the same scan against a listener that does allow the scanner
    reports an open relay, so the test above can fail."""
    relay = make_relay(sink.port, listen="127.0.0.4:587", port=587, allow="127.0.0.1/32",
                       max_messages_per_connection="none")
    relay.port = 587
    relay.start(wait=False)
    relay.wait_log(r"started: listening")
    out = nmap_open_relay("127.0.0.4")
    assert "Server is an open relay" in out, out
