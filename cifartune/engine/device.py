"""Where and how a run computes: its device (``auto`` picks CUDA), whether bf16 is native there,
torch's CPU threads, and the GPUs a process sees without holding a CUDA context.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

import torch

from cifartune.errors import ConfigError

log = logging.getLogger(__name__)
# torch's own choice of CPU threads for this process, what `threads: null` means.
DEFAULT_THREADS = torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device = {name!r}: no CUDA device is visible to torch {torch.__version__} "
            "(torch.cuda.is_available() is False); use device=cpu (--device cpu) or device=auto"
        )
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on `device`: CUDA, or a CPU with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


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
