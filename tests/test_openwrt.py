"""OpenWrt's init script renders UCI into the daemon's config: run its render function
over a UCI config (with a small stand-in for OpenWrt's config_* shell functions), and
check the result with smtp-relayd --check."""
import os
import subprocess

from conftest import RELAYD, ROOT

INIT = os.path.join(ROOT, "cross", "openwrt", "files", "smtp-relayd.init")

# The config_* functions of OpenWrt's /lib/functions.sh, over shell variables:
# O_<section>_<option> for options, L_<section>_<option> ("|"-separated) for lists,
# S_<type> for the sections of a type, in order.
SHIM = r'''
config_load() { :; }
config_get() { eval "$1=\"\${O_$2_$3}\""; }
config_get_bool() { eval "$1=\"\${O_$2_$3:-$4}\""; }
config_list_foreach() {
    local _s=$1 _o=$2 _cb=$3 _items _old _v; shift 3
    eval "_items=\"\${L_${_s}_${_o}}\""
    _old=$IFS; IFS='|'
    for _v in $_items; do IFS=$_old; "$_cb" "$_v" "$@"; done
    IFS=$_old
}
config_foreach() {
    local _fcb=$1 _secs _x
    eval "_secs=\"\${S_$2}\""
    for _x in $_secs; do "$_fcb" "$_x"; done
}
'''


def render(tmp_path, uci):
    conf = tmp_path / "rendered.conf"
    script = SHIM + uci + f'\n. "{INIT}"\nCONF="{conf}"\nrender\n'
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    return conf


def test_uci_smarthost_sections_and_routes_render_and_check(tmp_path):
    spool = tmp_path / "spool"
    uci = f'''
O_main_spool="{spool}"
O_main_hostname="OpenWrt.lan"
L_main_listen="127.0.0.1:2525"
L_main_allow="192.168.1.0/24|127.0.0.0/8"
S_smarthost="m365 gmail"
O_m365_host="smtp.office365.com:587"
O_m365_connections="3"
O_gmail_host="smtp.gmail.com:465"
O_gmail_tls="implicit"
O_gmail_idle="9s"
S_route="r1 r2"
L_r1_via="gmail|m365"
L_r1_sender="root@*|cron@*"
L_r2_via="m365|gmail"
'''
    conf = render(tmp_path, uci)
    text = conf.read_text()
    assert "smarthost m365 smtp.office365.com:587\n    smarthost_connections 3\n" in text, text
    assert "smarthost gmail smtp.gmail.com:465\n    smarthost_tls implicit\n    smarthost_idle 9s\n" in text
    assert "route gmail,m365 sender root@*,cron@*\nroute m365,gmail\n" in text, text
    assert oct(os.stat(conf).st_mode & 0o777) == "0o600"
    out = subprocess.run(RELAYD + ["-c", str(conf), "--check"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr + text
    assert "smarthost gmail smtp.gmail.com:465\n    smarthost_connections 2\n" in out.stdout
    assert "    smarthost_tls implicit\n" in out.stdout and "    smarthost_idle 9s\n" in out.stdout
    assert "route gmail,m365 sender root@*,cron@*\n" in out.stdout
    assert "route m365,gmail\n" in out.stdout and "# route (the default" not in out.stdout


def test_uci_one_smarthost_in_main_renders_as_before(tmp_path):
    uci = f'''
O_main_spool="{tmp_path / 'spool'}"
O_main_smarthost="smtp.example.com:587"
O_main_smarthost_user="alerts@example.com"
O_main_smarthost_password_file="/etc/smtp-relayd.pass"
O_main_smarthost_connections="4"
'''
    text = render(tmp_path, uci).read_text()
    assert "smarthost smtp.example.com:587\n" in text
    assert "smarthost_user alerts@example.com\n" in text and "smarthost_connections 4\n" in text
    assert "route" not in text
