"""The short soak (tests/soak.py) in the suite: SOAK_SECONDS (90 by default) of
steady traffic while the smarthost flaps between up, down, slow, deferring and
refusing, with a SIGKILL and restart half way; `make soak` runs 30 minutes."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import soak  # noqa: E402
from conftest import RUNNER  # noqa: E402


# Under an emulator its RSS is the emulator's, and its rate the emulator's too.
@pytest.mark.skipif(bool(RUNNER), reason="the soak measures the native binary")
def test_soak_delivers_each_message_once_and_leaks_nothing(tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "90"))
    f = soak.soak(seconds, rate=15, phase=max(5.0, seconds / 10), work=str(tmp_path), say=print)
    problems = f.pop("problems")
    print("soak:", f)
    assert not problems, "\n".join(problems[:30])
    # It really flapped and really carried traffic through a crash (at least one
    # message a second: the rate is the disk's, and CI's disk is not known).
    assert f["crash"] and f["modes"] >= 7 and f["acknowledged"] > seconds
    assert f["fds_end"] == f["fds_start"] and f["spool_end"] <= 64
