"""What a run really ran with, where its config leaves the choice to the machine or to a
default: the device, the precision ``auto`` picked, the CPU threads, the optimizer's momentum,
the split sizes. Recorded beside the requested config (the store's ``effective/<key>``
columns), so a result says what produced it on whichever machine it ran.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from cifartune.config.trial import TrialConfig
from cifartune.engine.device import DEFAULT_THREADS, resolve_precision
from cifartune.engine.splits import DeviceData

# Optimizers that take a momentum (torch's SGD and RMSprop); Adam's kind have betas instead.
WITH_MOMENTUM = ("sgd", "momentum", "nesterov", "rmsprop")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def effective_settings(config: TrialConfig, data: DeviceData) -> dict[str, Any]:
    """Setting -> the value a run of `config` on `data` (its device and split) uses for it."""
    device = data.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    optim = config.optim
    return {
        "device": str(device),
        "device_name": name,
        "precision": resolve_precision(config.precision, device),
        "threads": config.threads or DEFAULT_THREADS,
        "optim.momentum": optim.resolved_momentum if optim.name in WITH_MOMENTUM else None,
        "data.val_size": len(data.val_y),
        "data.train_subset": len(data.train_y),
    }
