"""The study driver runs in a child process of its own session, so that a signal to the whole
process group reaches only the command the user started.

Schedulers and tools stop a job by signalling its process group: `timeout`, Slurm's `scancel`,
systemd's control-group stop, a terminal's Ctrl-C and hang-up. Ray's local runtime (GCS,
raylet, trial processes), started by the driver, would sit in that group and die at the same
instant; the driver's Ray client then exits on its own (exit 1, nothing written, no hint).
Started here in a new session, the driver and its runtime see only what this process forwards:
the signal arrives at the driver alone, which stops the study cleanly (see ``signals``) and
exits 130. Should this process die outright (SIGKILL), the child gets SIGTERM (Linux's
parent-death signal) and stops the same way. On its way out the child ends every process left
in its session (Ray's agents outlive the raylet otherwise), so nothing keeps running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Set in the child: it runs the study itself. Its value is the pid of the process the user
# started, which study.json names as the study's driver.
SUPERVISED_ENV = "CIFARTUNE_SUPERVISOR_PID"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


def supervised() -> bool:
    """Whether this process is the study's child (or must run the study itself: not Linux)."""
    return bool(os.environ.get(SUPERVISED_ENV)) or not sys.platform.startswith("linux")


def user_pid() -> int:
    """The pid of the process the user started (this one, or its supervisor)."""
    return int(os.environ.get(SUPERVISED_ENV) or os.getpid())


def _stop_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def session_processes(session: int) -> list[int]:
    """Pids of the live processes of `session` (Linux /proc), zombies left out."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.append(int(stat.parent.name))
    return pids


def end_own_session() -> None:
    """SIGKILL every other process of this process's session, when it leads one (the study's
    child does): whatever Ray's shutdown left behind."""
    if not supervised() or os.getsid(0) != os.getpid():
        return
    for pid in session_processes(os.getpid()):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def run_supervised(argv: Sequence[str]) -> int:
    """Run ``cifartune ARGV`` as the study's child, forward stop signals to it, and return its
    exit status (128 + N for a child ended by signal N)."""
    parent = os.getpid()
    child = subprocess.Popen(
        [sys.executable, "-m", "cifartune", *argv],
        stdin=subprocess.DEVNULL,
        env={**os.environ, SUPERVISED_ENV: str(parent)},
        start_new_session=True,
        preexec_fn=lambda: _stop_with_parent(parent),
    )

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    for signum in FORWARDED:
        # A signal this process inherited as ignored (nohup's SIGHUP) stays ignored.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, forward)
    code = child.wait()
    return 128 - code if code < 0 else code
