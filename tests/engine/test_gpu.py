"""The engine on CUDA: skipped without a CUDA device (see conftest.py)."""

import warnings

import pytest
import torch
from torch import nn

from cifartune.engine.data import load_bundled
from cifartune.engine.loop import fit, train_one_epoch
from cifartune.engine.run import build_run
from cifartune.engine.splits import to_device

from ..support import quick_config, round_trip, without_timings

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


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "momentum"])
def test_a_cpu_checkpoint_resumes_on_cuda(bundled, name):
    # `cifartune train --resume` of a checkpoint written on a CPU (fused=None, `step` on the
    # CPU) into CUDA's fused optimizer: torch must place `step` where the fused kernel wants it.
    common = {"epochs": 3, "data__train_subset": 256, "optim__name": name, "optim__lr": 1e-3}
    states = {}
    fit(
        quick_config(device="cpu", **common),
        bundled,
        report=lambda m, t: states.setdefault(m["epoch"], t()),
    )
    cuda = fit(quick_config(device="cuda", **common), bundled, resume=round_trip(states[1]))
    assert cuda.status == "completed" and len(cuda.history) == 3
    optimizer = cuda.run.optimizer
    assert optimizer.param_groups[0]["fused"] is True
    for param, state in optimizer.state.items():
        if "step" in state:
            assert state["step"].device == param.device and state["step"].dtype == torch.float32


def test_zca_trains_on_cuda(bundled):
    cfg = quick_config(device="cuda", epochs=2, data__train_subset=1000, data__normalize="zca")
    result = fit(cfg, bundled)
    run = result.run
    assert run.normalizer.matrix.is_cuda and run.normalizer.matrix.shape == (3072, 3072)
    assert result.status == "completed" and result.history[-1]["val/top1"] > 12


@pytest.mark.parametrize(
    "name", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
)
def test_every_optimizer_trains_on_cuda(bundled, name):
    lr = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-4, "adagrad": 1e-2}.get(name, 0.02)
    cfg = quick_config(
        device="cuda", epochs=2, data__train_subset=500, optim__name=name, optim__lr=lr
    )
    result = fit(cfg, bundled)
    assert result.status == "completed"
    assert result.history[-1]["train/loss"] < result.history[0]["init/loss"]
    states = {}
    fit(cfg, bundled, report=lambda m, t: states.setdefault(m["epoch"], t()))
    resumed = fit(cfg, bundled, resume=round_trip(states[1]))
    assert without_timings(resumed.history) == without_timings(result.history)


def test_the_test_set_stays_off_the_gpu_until_scored(bundled):
    from cifartune.engine.loop import score_on_test

    cfg = quick_config(device="cuda", data__train_subset=256)
    data = to_device(bundled, cfg.data, torch.device("cuda"))
    result = fit(cfg, data)
    assert not data.test_on_device
    scores = score_on_test(cfg, data, result.run.state_dict())
    assert data.test_on_device and data.test_x.is_cuda and 0 <= scores["test/top1"] <= 100


def test_a_study_driver_holds_no_cuda_context():
    import subprocess
    import sys

    code = (
        "import torch; from cifartune.study import environment; "
        "hw = environment()['hardware']; "
        "assert hw['gpus'] and not torch.cuda.is_initialized(), hw; print(hw['gpus'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", ["model", "cudagraphs"])
def test_compiled_training_on_cuda_resumes_exactly(bundled, mode):
    cfg = quick_config(
        device="cuda", epochs=3, compile=mode, data__train_subset=640, model__dropout=0.3,
        optim__name="adam", optim__lr=1e-3,
    )  # fmt: skip
    states = {}
    full = fit(cfg, bundled, report=lambda m, t: states.setdefault(m["epoch"], t()))
    eager = fit(cfg.model_copy(update={"compile": "none"}), bundled)
    assert full.history[-1]["val/top1"] == pytest.approx(eager.history[-1]["val/top1"], abs=8)
    resumed = fit(cfg, bundled, resume=round_trip(states[1]))
    assert without_timings(resumed.history) == without_timings(full.history)


@pytest.mark.slow
def test_a_ray_study_packs_two_trials_on_one_gpu(tmp_path):
    # gpus: 0.25 and 2 trials: Ray runs both at once on the one GPU, each on CUDA.
    import pandas as pd

    from cifartune.store.study_data import read_study

    from ..support import TINY_BASE, run_cli, write_spec

    base = {**TINY_BASE, "epochs": 3, "data": {**TINY_BASE["data"], "train_subset": 1000}}
    spec = write_spec(
        tmp_path, name="packed", base=base, space={"optim.lr": [0.05, 0.01]},
        resources={"cpus": 1, "gpus": 0.25}, test_best=2,
    )  # fmt: skip
    result = run_cli(["run", str(spec), "--storage", str(tmp_path / "r")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "r" / "packed"
    study = read_study(results)
    trials, epochs = study.trials, study.epochs
    assert len(trials) == 2 and set(trials["state"]) == {"TERMINATED"}
    began = epochs["time/ended_at"] - pd.to_timedelta(epochs["time/epoch_s"], unit="s")
    spans = epochs.assign(start=began)
    spans = spans.groupby("trial_id").agg(start=("start", "min"), end=("time/ended_at", "max"))
    assert spans["start"].max() < spans["end"].min()  # the two trials overlapped in time
    assert len(pd.read_parquet(results / "test.parquet")) == 2


@pytest.mark.slow
def test_cifartune_train_resumes_a_cpu_adam_run_on_cuda(tmp_path, monkeypatch):
    # The same command on a machine without and then with a GPU (`device: auto` both times).
    import signal

    from ..support import REPO, run_cli, run_epochs, start_cli, stopped_at_exit, wait_for

    out = tmp_path / "run"
    sets = ["epochs=6", "data.train_subset=500", "data.source=bundled", "optim.name=adam",
            "optim.lr=0.001"]  # fmt: skip
    args = ["train", *(a for s in sets for a in ("--set", s)), "--out", str(out)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: auto is the CPU
    with stopped_at_exit(start_cli(args, cwd=REPO)) as process:
        wait_for(lambda: len(run_epochs(out)) >= 2, timeout=240)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    result = run_cli(["train", "--resume", "--out", str(out)], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_epochs(out)["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
