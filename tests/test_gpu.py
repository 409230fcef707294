"""The engine on CUDA: skipped without a CUDA device (see conftest.py)."""

import warnings

import pytest
import torch
from torch import nn

from cifartune.data import load_bundled, to_device
from cifartune.engine import build_run, fit, train_one_epoch

from .helpers import quick_config, round_trip, without_timings

pytestmark = pytest.mark.gpu
ALL_AUGMENTATIONS = "crop+flip+rotate+jitter+cutout"


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


def test_cuda_run_keeps_uint8_data_and_augments_on_the_gpu(bundled):
    cfg = quick_config(device="cuda", epochs=2, data__train_subset=1000, data__augment="crop+flip")
    result = fit(cfg, bundled)
    run = result.run
    assert result.status == "completed"
    assert run.data.train_x.is_cuda and run.data.train_x.dtype == torch.uint8
    assert run.generator.device.type == "cuda"
    assert run.optimizer.param_groups[0]["fused"] is True
    assert result.history[-1]["val/top1"] > 15


def test_cuda_layers_compute_in_bf16_and_channels_last(bundled):
    cfg = quick_config(device="cuda", precision="auto", data__train_subset=256)
    run = build_run(cfg, to_device(bundled, cfg.data, torch.device("cuda")))
    seen = []
    for module in run.model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(lambda m, i, o: seen.append((m, i[0], o)))
    train_one_epoch(run)
    assert {o.dtype for _, _, o in seen} == {torch.bfloat16}
    conv_inputs = [i for m, i, _ in seen if isinstance(m, nn.Conv2d)]
    assert all(i.is_contiguous(memory_format=torch.channels_last) for i in conv_inputs)


def _sync_warnings(train_subset):
    """Synchronizing CUDA calls during one non-first epoch (no init metrics) of 64-image batches."""
    cfg = quick_config(
        device="cuda", data__train_subset=train_subset, data__augment=ALL_AUGMENTATIONS
    )
    run = build_run(cfg, to_device(load_bundled(), cfg.data, torch.device("cuda")))
    train_one_epoch(run)
    run.epoch = 1
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(run)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


def test_no_host_sync_per_batch():
    # 4 batches vs 20 batches (both under DIVERGENCE_CHECK_EVERY): the end-of-epoch syncs only.
    few, many = _sync_warnings(256), _sync_warnings(1280)
    assert len(few) == len(many), many


@pytest.mark.parametrize("schedule", ["exponential", "onecycle"])
def test_cuda_resume_is_exact(bundled, schedule):
    cfg = quick_config(
        device="cuda",
        epochs=3,
        data__train_subset=1000,
        data__augment=ALL_AUGMENTATIONS,
        model__dropout=0.5,
        model__batchnorm=True,
        optim__name="adam",
        optim__lr=1e-3,
        schedule__name=schedule,
    )
    states = {}
    full = fit(cfg, bundled, report=lambda m, thunk: states.setdefault(m["epoch"], thunk()))
    resumed = fit(cfg, bundled, resume=round_trip(states[1]))
    assert without_timings(resumed.history) == without_timings(full.history)


def test_cuda_checkpoint_resumes_on_the_cpu(bundled, tmp_path):
    cfg = quick_config(device="cuda", epochs=2, data__train_subset=256, model__dropout=0.3)
    states = {}
    full = fit(cfg, bundled, report=lambda m, thunk: states.setdefault(m["epoch"], thunk()))
    torch.save(states[1], tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["rng"]["device_type"] == "cuda"
    on_cpu = fit(cfg.model_copy(update={"device": "cpu"}), bundled, resume=state)
    assert on_cpu.status == "completed" and on_cpu.history[0] == full.history[0]
    assert len(on_cpu.history) == 2 and on_cpu.run.data.train_x.device.type == "cpu"


def test_bf16_and_fp32_agree_on_cuda(bundled):
    common = {"device": "cuda", "epochs": 3, "data__normalize": "standardize"}
    fp32 = fit(quick_config(precision="fp32", **common), bundled).history[-1]
    bf16 = fit(quick_config(precision="bf16", **common), bundled).history[-1]
    assert bf16["val/top1"] == pytest.approx(fp32["val/top1"], abs=6)
    assert bf16["val/loss"] == pytest.approx(fp32["val/loss"], abs=0.15)
