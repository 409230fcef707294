"""What the study's driver records of the machine it runs on, without holding a CUDA context."""

import os

import torch

from cifartune.engine import device


def test_study_environment_creates_no_cuda_context(monkeypatch, tmp_path):
    # The driver trains nothing: counting GPUs and naming them must not initialize CUDA.
    from cifartune.study import environment

    def no_context(*_args, **_kwargs):
        raise AssertionError("a CUDA context in the driver")

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200'\necho 'NVIDIA H200'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("get_device_name", "get_device_properties", "init", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, no_context)
    hardware = environment.environment()["hardware"]
    assert hardware["gpus"] == ["NVIDIA H200", "NVIDIA H200"]
    assert not torch.cuda.is_initialized()
    smi.write_text("#!/bin/sh\nexit 9\n")  # nvidia-smi broken: the count still holds
    assert environment.environment()["hardware"]["gpus"] == ["unknown", "unknown"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert device.visible_gpus() == []
