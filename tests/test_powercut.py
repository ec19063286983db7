"""Power cuts, not only kill -9: the spool on strictfs (tests/strictfs.py), which
keeps only what was fsynced, cut at chosen points and at seeded random moments
(tests/powercut.py). A bounded number here; `make powercut N=...` runs more.

Each sweep cuts a scenario after each of its first N filesystem operations. Each
failed before its fix, at the seed and cut point named:
  fresh   a spool the daemon made itself vanished with every message in it
          (seed 1, policy lose, cut after operation 17);
  reuse1  the file of a delivered message, reused at once, came back in queue/
          holding the next message's envelope with its size still 0: delivered
          as an empty message (seed 1, mix, operation 1; seed 3, operation 3);
  reuse   the same with the file emptied, or zeros and the size: moved to
          corrupt/ as a "truncated envelope" (seed 1, mix, operation 4; seed 2,
          operation 1; seed 3, operation 9);
  failed  a message moved to failed/ (a rename) was in neither queue/ nor
          failed/ after the cut (seed 5, mix, operation 17).
"""
import errno
import os
import shutil
import stat
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import RUNNER  # noqa: E402

mfusepy = pytest.importorskip("mfusepy")
import powercut  # noqa: E402
from powercut import StrictMount  # noqa: E402

def _fuse_works():
    """Whether strictfs can be mounted here (a container may have /dev/fuse and no
    right to mount)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return False
    d = tempfile.mkdtemp(prefix="strictfs-probe-")
    try:
        os.mkdir(os.path.join(d, "m"))
        m = StrictMount(os.path.join(d, "m"), os.path.join(d, "img"), 0, "lose", os.path.join(d, "log"))
        m.unmount()
        return True
    except (RuntimeError, OSError):
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


pytestmark = [
    pytest.mark.skipif(not _fuse_works(), reason="needs root and a FUSE mount (/dev/fuse, fuse3)"),
    # The spool's logic is the same on every CPU; under an emulator these would
    # only measure the emulator.
    pytest.mark.skipif(bool(RUNNER), reason="power cuts run on the native binary"),
]


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def strict(tmp_path):
    """Mounts strictfs; `cut_and_remount()` cuts and serves the image again."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    image = str(tmp_path / "img")
    log = str(tmp_path / "fs.log")
    state = {}

    def mount(policy="lose", seed=0):
        state["m"] = StrictMount(str(mnt), image, seed, policy, log)
        state["policy"] = policy
        return str(mnt)

    def cut_and_remount(seed=0):
        state["m"].command("cut")
        state["m"].unmount()
        return mount(state["policy"], seed)

    yield mount, cut_and_remount, state
    if "m" in state:
        state["m"].unmount()


def test_the_model_keeps_only_what_was_synced(strict):
    mount, cut_and_remount, state = strict
    m = mount("lose")
    os.mkdir(f"{m}/d")
    with open(f"{m}/d/synced", "wb") as f:
        f.write(b"kept")
        f.flush()
        os.fsync(f.fileno())
    with open(f"{m}/d/unsynced", "wb") as f:
        f.write(b"lost")
    fsync_path(f"{m}/d")
    fsync_path(m)
    with open(f"{m}/d/synced", "ab") as f:
        f.write(b" and this is lost")
    os.rename(f"{m}/d/synced", f"{m}/d/renamed")  # never synced: undone
    os.mkdir(f"{m}/e")  # root not synced again: gone
    assert state["m"].state()["state"] == "running"
    m = cut_and_remount()
    assert sorted(os.listdir(m)) == ["d"]
    assert sorted(os.listdir(f"{m}/d")) == ["synced", "unsynced"]
    assert open(f"{m}/d/synced", "rb").read() == b"kept"
    # The name was synced with its directory; the data never was.
    assert open(f"{m}/d/unsynced", "rb").read() == b""


def test_after_a_cut_everything_fails_and_an_armed_cut_lands_after_its_operation(strict):
    mount, cut_and_remount, state = strict
    m = mount("lose")
    state["m"].command("arm fsync 2")
    fd = os.open(f"{m}/a", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"1")
    os.fsync(fd)
    os.write(fd, b"2")
    os.fsync(fd)  # the second fsync: it lands, then the power goes
    with pytest.raises(OSError) as e:
        os.write(fd, b"3")
    assert e.value.errno == errno.EIO
    os.close(fd)
    with pytest.raises(OSError):
        os.listdir(m)
    assert state["m"].state()["state"] == "cut"
    state["m"].unmount()
    m = mount("lose")
    # The file's name was never synced into the root: it is gone with its data.
    assert os.listdir(m) == []


def test_the_mix_policy_can_split_a_rename_between_two_directories(strict):
    """ext2-like write-back: each directory's change lands or not on its own."""
    mount, cut_and_remount, state = strict
    outcomes = set()
    for seed in range(12):
        m = mount("mix", seed) if seed == 0 else cut_and_remount(seed)
        for d in ("a", "b"):
            if not os.path.isdir(f"{m}/{d}"):
                os.mkdir(f"{m}/{d}")
        fsync_path(m)
        for d in ("a", "b"):
            for name in os.listdir(f"{m}/{d}"):
                os.unlink(f"{m}/{d}/{name}")
        with open(f"{m}/a/f", "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(f"{m}/a")
        fsync_path(f"{m}/b")
        os.rename(f"{m}/a/f", f"{m}/b/f")
        m = cut_and_remount(seed + 100)
        outcomes.add((os.path.exists(f"{m}/a/f"), os.path.exists(f"{m}/b/f")))
    # Both, one or the other, and neither: the strictfs model allows each.
    assert (False, False) in outcomes and (True, True) in outcomes, outcomes


def test_a_fresh_spool_survives_a_cut_at_every_point():
    assert powercut.sweep("fresh", 30, 1, "lose") > 0


@pytest.mark.parametrize("scenario,seed", [("reuse1", 1), ("reuse1", 3), ("reuse", 1), ("reuse", 2), ("reuse", 3)])
def test_a_reused_file_never_comes_back_empty_or_mixed(scenario, seed):
    assert powercut.sweep(scenario, 12 if scenario == "reuse1" else 16, seed, "mix") > 0


def test_a_move_to_failed_and_back_is_never_lost():
    """Through the move to failed/, `retry-failed` and the move back."""
    assert powercut.sweep("failed", 45, 5, "mix") > 0


@pytest.mark.parametrize("policy,seed", [("lose", 11), ("mix", 12)])
def test_random_cuts_under_load_lose_nothing_acknowledged(policy, seed):
    """SMTP clients, sendmail and queue commands while the smarthost is up, down or
    slow; 5 cuts, then every promise checked (powercut.Run.check)."""
    lines = []
    f = powercut.run(5, seed, policy, say=lines.append)
    print("\n".join(lines), f)
    assert f["cuts"] == 5 and f["acknowledged"] > 50 and f["delivered"] > 0, (f, lines)


def test_the_refresh_token_file_survives_cuts_during_its_rewrite(tmp_path, strict, pki):
    """The rotated OAuth refresh token is written with fsync, rename and a directory
    fsync; a cut after any of those operations leaves the old token or the new one,
    never an empty or a mixed file."""
    from test_oauth import relay_conf, send
    from oauth_mock import TokenEndpoint, start_smarthost
    from conftest import Relay, free_port, server_context
    pytest.importorskip("aiosmtpd.controller")
    mount, cut_and_remount, state = strict
    seen = []
    for k in range(1, 9):
        m = mount("mix", k) if k == 1 else cut_and_remount(k)
        ep = TokenEndpoint(pki["cert"], pki["key"], free_port(), rotate=True).start()
        ctl, smarthost = start_smarthost(ep, server_context(pki["cert"], pki["key"]), free_port(), False)
        try:
            token_dir = f"{m}/etc"
            if not os.path.isdir(token_dir):
                os.mkdir(token_dir)
                fsync_path(m)
            path = f"{token_dir}/refresh.token"
            with open(path, "w") as f:
                f.write("rt-initial-0\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(path, 0o600)
            fsync_path(token_dir)
            os.makedirs(tmp_path / f"r{k}", exist_ok=True)
            conf = relay_conf(pki, ep, tmp_path / f"r{k}", "refresh_token", auth="oauthbearer")
            conf["smarthost_oauth_refresh_token_file"] = path
            relay = Relay(str(tmp_path / f"r{k}"), ctl.port, **conf)
            state["m"].command(f"arm any {k}")
            relay.start()
            send(relay)
            if not state["m"].wait_cut(5):
                state["m"].command("cut")
            relay.kill9()
            issued = ["rt-initial-0"] + sorted(ep.refresh_tokens)
        finally:
            ctl.stop()
            ep.stop()
        state["m"].unmount()
        m = mount("mix", k + 50)
        text = open(f"{m}/etc/refresh.token").read()
        assert text.endswith("\n") and text.strip() in issued, (k, text, issued)
        assert stat.S_IMODE(os.stat(f"{m}/etc/refresh.token").st_mode) == 0o600
        seen.append(text.strip())
    # Some cuts landed before the new token was durable, some after.
    assert "rt-initial-0" in seen and any(t.startswith("rt-rotated") for t in seen), seen

