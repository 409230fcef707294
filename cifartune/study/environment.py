"""What a study ran on (versions, host, CPUs, GPUs), recorded in study.json."""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import version
from typing import Any


def environment() -> dict[str, Any]:
    import optuna
    import ray
    import torch

    from cifartune.engine.device import visible_gpus

    # Not torch.cuda.get_device_name: it would hold a CUDA context in a driver that trains
    # nothing (see visible_gpus).
    gpus = visible_gpus()
    return {
        "versions": {
            "cifartune": version("cifartune"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "optuna": optuna.__version__,
        },
        "hardware": {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "gpus": gpus,
            "platform": platform.platform(),
        },
    }
