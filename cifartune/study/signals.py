"""Stop signals: SIGTERM (Slurm's scancel, Kubernetes, systemd, `timeout`) and SIGHUP (a closed
ssh session) stop a study the way Ctrl-C does, and a stop has a deadline.

Schedulers and `timeout` signal the whole process group, which also holds Ray's local runtime:
it dies at once, and a driver's clean stop would then wait a minute for it (Ray's GCS
reconnection timeout) and die without saying so. While a study runs, a signal therefore starts
a watchdog: once the runtime is found dead, or FORCE_AFTER_S seconds have passed, it runs the
study's forced stop (the state is written, the hint printed, the runtime stopped) and exits
with EXIT_INTERRUPTED. A signal the process inherited as ignored (``nohup`` ignores SIGHUP)
stays ignored: that is how a user detaches a study from a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from cifartune.errors import EXIT_INTERRUPTED

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# A clean stop with a live runtime takes a few seconds (Tune ends its trials and saves its
# state); past this, or once the runtime is dead, the watchdog stops the study itself.
FORCE_AFTER_S = 8.0
POLL_S = 0.25


class _Deadline:
    """What the watchdog does, registered by the study for the time it runs."""

    def __init__(self, force: Callable[[], None], runtime_dead: Callable[[], bool]):
        self.force, self.runtime_dead = force, runtime_dead
        self.finished = threading.Event()
        self.watchdog: threading.Thread | None = None

    def start(self, signum: int) -> None:
        if self.watchdog is None:
            self.watchdog = threading.Thread(
                target=self._watch, args=(signum,), name="cifartune-stop", daemon=True
            )
            self.watchdog.start()

    def _watch(self, signum: int) -> None:
        deadline = time.monotonic() + FORCE_AFTER_S
        while not self.finished.wait(POLL_S):
            dead = self._dead()
            if dead or time.monotonic() > deadline:
                log.warning(
                    "%s: %s; stopping the study now",
                    signal.Signals(signum).name,
                    "Ray's runtime is gone" if dead else f"no clean stop in {FORCE_AFTER_S:.0f} s",
                )
                try:
                    self.force()
                finally:  # whatever the forced stop met, the process ends: that is the promise
                    os._exit(EXIT_INTERRUPTED)

    def _dead(self) -> bool:
        try:
            return self.runtime_dead()
        except Exception as exc:  # a probe that fails says nothing; the deadline still holds
            log.debug("runtime probe failed: %s", exc)
            return False


_deadline: _Deadline | None = None


def stop_like_ctrl_c(signum: int, frame: Any) -> None:
    """A signal handler that does what Ctrl-C does now: Ray Tune's own SIGINT handler while a
    study runs (it ends the trials cleanly and saves the experiment), else KeyboardInterrupt;
    and, while a study runs, it starts the deadline's watchdog."""
    if _deadline is not None:
        _deadline.start(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not stop_like_ctrl_c:
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP act as Ctrl-C (unless inherited ignored); call again after anything
    that replaces the handlers (ray.init replaces SIGTERM's with one that aborts the driver,
    leaving its processes behind). Main thread only, like every signal handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, stop_like_ctrl_c)


@contextlib.contextmanager
def stop_deadline(force: Callable[[], None], runtime_dead: Callable[[], bool]) -> Iterator[None]:
    """While the block runs, a stop signal gives it until the deadline (see the module)."""
    global _deadline
    _deadline = _Deadline(force, runtime_dead)
    try:
        yield
    finally:
        _deadline.finished.set()
        _deadline = None
