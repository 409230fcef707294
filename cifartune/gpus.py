"""What GPUs a process sees, found without creating a CUDA context in it."""

from __future__ import annotations

import logging
import shutil
import subprocess

import torch

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """Names of the GPUs this process sees, without creating a CUDA context here.

    ``torch.cuda.get_device_name`` would initialize CUDA and hold a context (about 0.5 GB on
    GPU 0) for the life of the process: a study's driver trains nothing. The count comes from
    ``torch.cuda.device_count`` (NVML, or a runtime query that opens no context) and the names
    from ``nvidia-smi`` in a child process; without it they read "unknown"."""
    count = torch.cuda.device_count()
    if count == 0:
        return []
    names: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            )  # fmt: skip
            names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("nvidia-smi failed (%s); GPU names are recorded as unknown", exc)
    # CUDA_VISIBLE_DEVICES may hide some of what nvidia-smi lists: the names are only kept
    # when they match the count torch sees.
    return names if len(names) == count else ["unknown"] * count
