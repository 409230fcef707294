"""Stop signals while a study runs (cifartune.study.signals), in a real child process: SIGTERM and
SIGHUP act as Ctrl-C, a stop that cannot end cleanly (Ray's runtime dead, or past the deadline)
is forced with exit 130, and a signal inherited as ignored (nohup) stays ignored."""

import signal
import subprocess
import sys

import pytest

from ..support import REPO, default_signals

CHILD = """
import pathlib, sys, time
from cifartune.study import signals
signals.FORCE_AFTER_S = 1.0  # the deadline, short for the test
out, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
signals.stop_on_signals()
with signals.stop_deadline(lambda: out.write_text("forced"), lambda: mode == "dead"):
    try:
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        if mode == "clean":
            out.write_text("clean")
            sys.exit(0)
        while True:  # stuck in the stop, as a driver waiting for a dead GCS is
            time.sleep(0.05)
"""


def _start(tmp_path, mode, preexec=default_signals):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "out"), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )
    assert child.stdout.readline().strip() == "ready"
    return child


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("mode", ["dead", "stuck"])
def test_a_stop_that_cannot_end_cleanly_is_forced(tmp_path, signum, mode):
    child = _start(tmp_path, mode)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert (tmp_path / "out").read_text() == "forced"
    reason = "Ray's runtime is gone" if mode == "dead" else "no clean stop in 1 s"
    assert f"{signal.Signals(signum).name}: {reason}" in stderr


def test_a_clean_stop_is_not_forced(tmp_path):
    child = _start(tmp_path, "clean")
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    assert child.returncode == 0 and (tmp_path / "out").read_text() == "clean"


def test_sighup_inherited_ignored_stays_ignored(tmp_path):
    def nohup():
        default_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    child = _start(tmp_path, "dead", preexec=nohup)
    try:
        child.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=3)  # detached: SIGHUP changes nothing
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=60)
        assert child.returncode == 130
    finally:
        child.kill()
        child.wait()
