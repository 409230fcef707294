"""SIGTERM as Ctrl-C: what Slurm, Kubernetes and `timeout` send must stop a study cleanly."""

from __future__ import annotations

import signal
from typing import Any


def stop_like_ctrl_c(signum: int, frame: Any) -> None:
    """A signal handler that does what Ctrl-C does now: Ray Tune's own SIGINT handler while a
    study runs (it ends the trials cleanly and saves the experiment), else KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
