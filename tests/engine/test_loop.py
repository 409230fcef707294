import copy
import math
import os
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifartune.config.trial import DataConfig, OptimizerName, ScheduleName
from cifartune.engine import device, loop, optim
from cifartune.engine import run as engine_run
from cifartune.engine.data import CifarArrays, load_bundled
from cifartune.engine.device import native_bf16, resolve_precision
from cifartune.engine.loop import evaluate, fit, score_on_test, train_one_epoch
from cifartune.engine.run import build_run
from cifartune.engine.splits import split_indices, to_device
from cifartune.engine.transforms import to_float
from cifartune.errors import ConfigError

from ..support import TIMING, quick_config, round_trip, synthetic_arrays, without_timings

# What `precision` the engine tests run at: auto (this CPU's own choice) unless forced, e.g.
# CIFARTUNE_TEST_PRECISION=bf16 shows on any CPU what a bf16-native CPU runs. Tests whose
# thresholds depend on the numerics pin their precision instead.
TEST_PRECISION = os.environ.get("CIFARTUNE_TEST_PRECISION", "auto")


def config(**overrides):
    return quick_config(**{"precision": TEST_PRECISION, **overrides})


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


def test_reports_every_epoch_with_the_stable_metric_names(bundled):
    cfg = config(epochs=2, eval_test=True, data__train_subset=200)
    seen = []
    result = fit(cfg, bundled, report=lambda m, state: seen.append((m, state)))
    assert result.status == "completed"
    assert [m["epoch"] for m, _ in seen] == [1, 2]
    expected = {"epoch", "lr", "diverged", *TIMING, "init/loss", "init/top1", "init/top5"}
    expected |= {
        f"{split}/{name}" for split in ("train", "val", "test") for name in ("loss", "top1", "top5")
    }
    assert set(seen[0][0]) == expected
    assert "init/loss" not in seen[1][0]  # only the first epoch carries the untrained batch
    checkpoint = seen[-1][1]()
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2


def test_first_epoch_loss_on_random_init_is_near_ln10(bundled):
    # With a tiny learning rate the network stays at its initialisation for the whole epoch.
    result = fit(config(optim__lr=1e-6, data__train_subset=500), bundled)
    assert result.history[0]["init/loss"] == pytest.approx(math.log(10), abs=0.1)
    assert result.history[0]["train/loss"] == pytest.approx(math.log(10), abs=0.05)
    assert result.history[0]["val/top1"] == pytest.approx(10, abs=6)
    assert result.history[0]["val/top5"] == pytest.approx(50, abs=15)


def test_a_tiny_subset_can_be_overfit(bundled):
    cfg = quick_config(
        precision="fp32",
        epochs=30,
        batch_size=25,
        data__train_subset=50,
        optim__name="adam",
        optim__lr=1e-3,
    )
    # Training epochs only: scoring the validation split every epoch would triple the cost.
    run = build_run(cfg, to_device(bundled, cfg.data, torch.device("cpu")))
    for _ in range(cfg.epochs):
        last = train_one_epoch(run)
    assert last["train/top1"] >= 98
    assert last["train/loss"] < 0.1


def test_the_model_learns_above_chance_on_real_images(bundled):
    # Real photographs, 200 stratified validation images: chance is 10% (+-2.1 points).
    cfg = quick_config(
        precision="fp32",
        epochs=3,
        batch_size=32,
        data__train_subset=600,
        data__normalize="standardize",
        optim__name="adam",
        optim__lr=2e-3,
    )
    history = fit(cfg, bundled).history
    assert history[-1]["val/top1"] >= 20
    assert history[-1]["train/loss"] < math.log(10) - 0.15


def test_same_seed_same_run_and_other_seed_differs(bundled):
    cfg = config(epochs=2, data__train_subset=200, data__augment="crop+flip", model__dropout=0.3)
    a = without_timings(fit(cfg, bundled).history)
    b = without_timings(fit(cfg, bundled).history)
    c = without_timings(fit(cfg.model_copy(update={"seed": 1}), bundled).history)
    assert a == b
    assert a != c


@pytest.mark.parametrize("schedule", ["exponential", "onecycle"])
def test_resumed_run_matches_an_uninterrupted_one(bundled, schedule):
    cfg = config(
        epochs=4,
        data__train_subset=200,
        data__augment="crop+flip+cutout",
        model__dropout=0.5,
        model__batchnorm=True,
        optim__name="momentum",
        schedule__name=schedule,
    )
    states = {}
    full = fit(cfg, bundled, report=lambda m, thunk: states.setdefault(m["epoch"], thunk()))
    resumed = fit(cfg, bundled, resume=round_trip(states[2]))
    assert without_timings(resumed.history) == without_timings(full.history)
    assert len(resumed.history) == 4


def test_a_checkpoint_from_another_device_type_resumes_reproducibly(bundled):
    # What a CUDA checkpoint looks like once loaded with map_location=cpu: CPU tensors, but a
    # Philox generator state (16 bytes) that a CPU generator cannot take, and fused kernels.
    cfg = config(epochs=3, data__train_subset=100, data__augment="crop+flip", model__dropout=0.3)
    states = {}
    full = fit(cfg, bundled, report=lambda m, thunk: states.setdefault(m["epoch"], thunk()))
    foreign = round_trip(states[1])
    foreign["rng"].update(
        device_type="cuda",
        generator=torch.zeros(16, dtype=torch.uint8),
        cuda=torch.zeros(16, dtype=torch.uint8),
    )
    for group in foreign["optimizer"]["param_groups"]:
        group["fused"] = True
    a = fit(cfg, bundled, resume=foreign)
    b = fit(cfg, bundled, resume=round_trip(foreign))
    assert a.history[0] == full.history[0]  # the checkpoint's epoch is kept as it was
    assert len(a.history) == 3 and a.status == "completed"
    assert without_timings(a.history) == without_timings(b.history)  # reseeded from (seed, epoch)
    assert not a.run.optimizer.param_groups[0]["fused"]  # our kernel choice, not the writer's


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"schedule__name": "constant"}, [0.1, 0.1, 0.1]),
        ({"schedule__name": "exponential", "schedule__gamma": 0.5}, [0.1, 0.05, 0.025]),
        (
            {"schedule__name": "step", "schedule__step_size": 2, "schedule__gamma": 0.5},
            [0.1, 0.1, 0.05],
        ),
        # 0.1 * (1 + cos(pi * epoch / 3)) / 2 for epochs 0, 1, 2
        ({"schedule__name": "cosine"}, [0.1, 0.075, 0.025]),
        ({"schedule__name": "cosine", "schedule__min_lr_ratio": 0.5}, [0.1, 0.0875, 0.0625]),
    ],
)
def test_epoch_schedules_follow_their_learning_rate_trajectory(bundled, schedule, expected):
    cfg = config(epochs=3, data__train_subset=20, data__val_size=20, **schedule)
    history = fit(cfg, bundled).history
    assert [m["lr"] for m in history] == pytest.approx(expected)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad")


def _steps(name, grad, steps=2, **overrides):
    """`steps` optimizer steps (lr 0.1) on one parameter whose gradient is the constant `grad`."""
    cfg = quick_config(optim__name=name, optim__lr=0.1, **overrides)
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = optim.build_optimizer(cfg.optim, iter([p]), torch.device("cpu"))
    for _ in range(steps):
        optimizer.zero_grad()
        (p * torch.tensor(grad, dtype=torch.float64)).sum().backward()
        optimizer.step()
    return p.detach()


# Two steps from p0 = (1, -2) with lr 0.1 and constant gradient g = (0.5, -0.25), by hand:
# SGD moves lr*g per step; heavy-ball momentum 0.9 moves lr*g then lr*1.9g; Nesterov
# lr*1.9g then lr*(g + 0.9*1.9g); Adam(W)'s bias-corrected step is lr*sign(g) each time; RMSprop
# (alpha 0.99) divides by sqrt(0.01 g^2) then sqrt(0.0199 g^2); Adagrad by |g| then sqrt(2)|g|.
G = np.array([0.5, -0.25])
P0 = np.array([1.0, -2.0])
EXPECTED_TWO_STEPS = {
    "sgd": P0 - 0.1 * 2 * G,
    "momentum": P0 - 0.1 * 2.9 * G,
    "nesterov": P0 - 0.1 * (1.9 + 2.71) * G,
    "adam": P0 - 0.1 * 2 * np.sign(G),
    "adamw": P0 - 0.1 * 2 * np.sign(G),
    "rmsprop": P0 - 0.1 * (1 / math.sqrt(0.01) + 1 / math.sqrt(0.0199)) * np.sign(G),
    "adagrad": P0 - 0.1 * (1 + 1 / math.sqrt(2)) * np.sign(G),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_makes_its_own_update(name):
    # abs 1e-5: the adaptive methods add eps (1e-8) to the denominator.
    assert _steps(name, G.tolist()).numpy() == pytest.approx(EXPECTED_TWO_STEPS[name], abs=1e-5)


def test_adamw_decays_weights_decoupled_and_adam_through_the_gradient():
    # One step, zero gradient, weight decay 0.1: AdamW shrinks p by lr*wd; Adam's decay enters
    # as a gradient wd*p, whose normalised first step is lr*sign(p).
    adamw = _steps("adamw", [0.0, 0.0], steps=1, optim__weight_decay=0.1)
    adam = _steps("adam", [0.0, 0.0], steps=1, optim__weight_decay=0.1)
    assert adamw.numpy() == pytest.approx(P0 * 0.99)
    assert adam.numpy() == pytest.approx(P0 - 0.1 * np.sign(P0), abs=1e-5)


def test_explicit_momentum_is_used():
    moved = _steps("sgd", G.tolist(), optim__momentum=0.5)  # lr*g, then lr*1.5g
    assert moved.numpy() == pytest.approx(P0 - 0.1 * 2.5 * G)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_onecycle_keeps_each_optimizers_momentum_and_shapes_the_lr(name):
    momentum = {"optim__momentum": 0.5} if name in ("sgd", "rmsprop") else {}
    cfg = quick_config(optim__name=name, optim__lr=0.1, schedule__name="onecycle", **momentum)
    p = nn.Parameter(torch.ones(3))
    optimizer = optim.build_optimizer(cfg.optim, iter([p]), torch.device("cpu"))
    scheduler = optim.build_scheduler(cfg.schedule, optimizer, epochs=4, steps_per_epoch=25)
    group = optimizer.param_groups[0]
    expected = {k: group[k] for k in ("momentum", "betas") if k in group}
    expected_momentum = {"sgd": 0.5, "rmsprop": 0.5, "momentum": 0.9, "nesterov": 0.9}
    if name in expected_momentum:
        assert expected["momentum"] == expected_momentum[name]
    if name in ("adam", "adamw"):
        assert expected["betas"] == (0.9, 0.999)
    lrs = []
    for _ in range(100):
        lrs.append(group["lr"])
        p.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
        assert {k: group[k] for k in expected} == expected
    # lr/25 at the start, the configured lr after pct_start (25%) of the steps, then ~0.
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and 20 <= lrs.index(max(lrs)) <= 26
    assert lrs[-1] < 0.1 / 1000


def test_adagrad_with_onecycle_trains(bundled):
    cfg = config(
        data__train_subset=64,
        data__val_size=20,
        optim__name="adagrad",
        optim__lr=0.01,
        schedule__name="onecycle",
    )
    result = fit(cfg, bundled)
    assert result.status == "completed" and math.isfinite(result.history[0]["train/loss"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_divergence_is_caught_inside_an_epoch(bundled, precision):
    # 50 batches of 4 at lr 100: the loss explodes within the first DIVERGENCE_CHECK_EVERY (25)
    # batches, and the check after batch 25 ends the epoch there.
    assert loop.DIVERGENCE_CHECK_EVERY == 25
    seen = []
    cfg = quick_config(
        precision=precision,
        optim__lr=100.0,
        batch_size=4,
        data__train_subset=200,
        data__val_size=20,
    )
    result = fit(cfg, bundled, progress=lambda done, total: seen.append(done))
    assert result.status == "diverged" and result.history[-1]["diverged"] is True
    assert seen[-1] == 25 * 4  # stopped at the first check, not at the end of the epoch (200)


def test_diverging_run_ends_as_diverged_and_keeps_its_epochs(bundled):
    cfg = config(epochs=6, optim__lr=0.01, batch_size=8, data__train_subset=64, data__val_size=20)
    states = {}
    fit(cfg.model_copy(update={"epochs": 2}), bundled, report=lambda m, t: states.update(s=t()))
    state = round_trip(states["s"])
    # From epoch 3 on the run trains at lr 100 (both the optimizer's and the schedule's lr).
    state["optimizer"]["param_groups"][0]["lr"] = 100.0
    state["scheduler"]["base_lrs"] = [100.0]
    reported = []
    result = fit(cfg, bundled, resume=state, report=lambda m, _: reported.append(m))
    assert result.status == "diverged"
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    assert result.history[:2] == state["history"]  # the good epochs are kept
    assert reported == result.history[2:]
    assert [m["diverged"] for m in result.history] == [False, False, True]
    # Resuming a diverged run trains nothing more.
    again = fit(cfg, bundled, resume=round_trip(result.run.state_dict()))
    assert again.status == "diverged" and len(again.history) == 3


def test_a_loss_above_1000_nats_is_divergence_even_when_finite():
    # README: "A non-finite or exploding loss (> 1000) ends the run as diverged".
    assert loop.DIVERGENCE_LOSS == 1000
    assert loop._finite_and_bounded(torch.tensor(999.0))
    for loss in (1000.5, 1e6, math.inf, -math.inf, math.nan):
        assert not loop._finite_and_bounded(torch.tensor(loss))


# Dropout and batch norm: the layers whose output depends on train/eval mode.
MODE_DEPENDENT = {
    "precision": "fp32",
    "model__dropout": 0.5,
    "model__batchnorm": True,
    "data__train_subset": 100,
    "data__val_size": 50,
}


def _trained_run(bundled):
    """A run after one training epoch: its model in training mode, batch-norm statistics moved."""
    cfg = quick_config(**MODE_DEPENDENT)
    run = build_run(cfg, to_device(bundled, cfg.data, torch.device("cpu")))
    train_one_epoch(run)
    assert run.model.training
    return run


def _eval_mode_scores(model, run, images, labels):
    """Loss and top-1 of `model` in eval mode, computed by hand (no crop configured)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits = model(run.model_input(to_float(images))).float()
    loss = F.cross_entropy(logits, labels).item()
    return loss, 100.0 * (logits.argmax(1) == labels).float().mean().item()


def test_validation_runs_the_model_in_eval_mode(bundled):
    run = _trained_run(bundled)
    before = copy.deepcopy(run.model.state_dict())
    first = evaluate(run, run.data.val_x, run.data.val_y, "val")
    second = evaluate(run, run.data.val_x, run.data.val_y, "val")
    assert first == second  # no dropout noise
    after = run.model.state_dict()
    for name, tensor in before.items():  # batch-norm running statistics untouched
        assert torch.equal(after[name], tensor), name
    loss, top1 = _eval_mode_scores(run.model, run, run.data.val_x, run.data.val_y)
    assert first["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert first["val/top1"] == pytest.approx(top1)


def test_test_scoring_runs_the_saved_model_in_eval_mode(bundled):
    run = _trained_run(bundled)
    state = round_trip(run.state_dict())
    first = score_on_test(run.config, run.data, state)
    assert score_on_test(run.config, run.data, state) == first
    model = copy.deepcopy(run.model)
    model.load_state_dict(state["model"])
    loss, top1 = _eval_mode_scores(model, run, run.data.test_x, run.data.test_y)
    assert first["test/loss"] == pytest.approx(loss, rel=1e-5)
    assert first["test/top1"] == pytest.approx(top1)


def test_every_epoch_trains_in_training_mode_and_scores_in_eval_mode(bundled):
    # 100 training images in batches of 64: two training forwards, then one validation forward
    # (eval_test is off: no test-set pass), every epoch, whatever mode the epoch before left.
    cfg = quick_config(epochs=2, **MODE_DEPENDENT)
    data = to_device(bundled, cfg.data, torch.device("cpu"))
    run = build_run(cfg, data)
    modes = []
    run.model.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    for _ in range(cfg.epochs):
        loop.run_epoch(run, with_test=cfg.eval_test)
    assert modes == [True, True, False] * 2
    assert not any(key.startswith("test/") for key in run.history[-1])


def test_normalizer_is_fitted_on_the_training_split_only():
    # Training images: a 0/102 checkerboard (mean 0.2, std 0.2 in every channel, exactly);
    # validation and test images are all 255, so any leak moves the statistics far away.
    arrays = synthetic_arrays(200, 50)
    data_cfg = DataConfig(val_size=50, normalize="standardize")
    val = split_indices(arrays.train_labels, data_cfg).val
    board = (np.indices((32, 32)).sum(0) % 2 * 102).astype(np.uint8)[:, :, None]
    train_images = np.broadcast_to(board, arrays.train_images.shape).copy()
    train_images[val] = 255
    leaky = CifarArrays(
        train_images,
        arrays.train_labels,
        np.full_like(arrays.test_images, 255),
        arrays.test_labels,
        "x",
    )
    data = to_device(leaky, data_cfg, torch.device("cpu"))
    run = build_run(quick_config(data__normalize="standardize", data__val_size=50), data)
    assert run.normalizer.mean.flatten().tolist() == pytest.approx([0.2] * 3, abs=1e-6)
    assert run.normalizer.matrix.flatten().tolist() == pytest.approx([5.0] * 3, rel=1e-5)


def test_auto_precision_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert native_bf16(cpu)
    elif flags and "avx512" not in flags:  # AVX2-only: bf16 would be emulated
        assert not native_bf16(cpu)
    assert native_bf16(torch.device("cuda"))
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "native_bf16", lambda _device, n=native: n)
        assert resolve_precision("auto", cpu) == expected


def _layer_outputs(cfg, arrays):
    """The dtype and layout of every conv/linear input and output during one training epoch."""
    data = to_device(arrays, cfg.data, torch.device("cpu"))
    run = build_run(cfg, data)
    seen = []

    def hook(module, inputs, output):
        seen.append((type(module).__name__, inputs[0], output))

    for module in run.model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(hook)
    train_one_epoch(run)
    return run, seen


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_precision_sets_the_dtype_the_layers_compute_in(precision):
    cfg = quick_config(precision=precision, batch_size=8, data__val_size=10)
    _, seen = _layer_outputs(cfg, synthetic_arrays(18, 10))
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert len(seen) == 5
    assert {output.dtype for _, _, output in seen} == {expected}


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_is_applied_to_the_model_and_its_input(channels_last):
    cfg = quick_config(
        precision="fp32", channels_last=channels_last, batch_size=8, data__val_size=10
    )
    run, seen = _layer_outputs(cfg, synthetic_arrays(18, 10))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv_inputs = [x for name, x, _ in seen if name == "Conv2d"]
    assert conv_inputs and all(x.is_contiguous(memory_format=layout) for x in conv_inputs)
    conv1 = run.model.features[0]
    assert conv1.weight.is_contiguous(memory_format=layout)


def test_bf16_and_fp32_runs_agree_within_a_tolerance(bundled):
    common = {"epochs": 1, "batch_size": 32, "data__train_subset": 128, "data__val_size": 50}
    fp32 = fit(quick_config(precision="fp32", optim__lr=0.05, **common), bundled).history[0]
    bf16 = fit(quick_config(precision="bf16", optim__lr=0.05, **common), bundled).history[0]
    assert bf16["train/loss"] != fp32["train/loss"]  # really computed differently
    assert bf16["train/loss"] == pytest.approx(fp32["train/loss"], abs=0.05)
    assert bf16["val/loss"] == pytest.approx(fp32["val/loss"], abs=0.05)


@pytest.mark.parametrize(("cuda", "expected"), [(True, "cuda"), (False, "cpu")])
def test_auto_device_is_cuda_when_present(monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert device.resolve_device("auto") == torch.device(expected)
    assert device.resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_a_clear_error(bundled, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device = 'cuda': no CUDA device.*use device=cpu"):
        fit(quick_config(device="cuda"), bundled)


def _fused(monkeypatch):
    """The engine's optimizers built with torch's fused kernels (CPU fused Adam/SGD exist)."""
    build = optim.build_optimizer
    monkeypatch.setattr(engine_run, "build_optimizer", lambda *a, **k: build(*a, **k, fused=True))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_a_cpu_written_adam_checkpoint_resumes_into_a_fused_optimizer(bundled, monkeypatch, name):
    # `cifartune train --resume` of a CPU checkpoint on CUDA (PyTorch issue 124133): the CPU
    # wrote fused=None, the resuming optimizer is fused. torch places each `step` tensor by the
    # flags of the param groups it loads, so ours must be in them before it does: a fused
    # kernel wants `step` as float32 on the parameter's device.
    _fused(monkeypatch)
    cfg = config(epochs=3, data__train_subset=128, optim__name=name, optim__lr=1e-3)
    states = {}
    full = fit(cfg, bundled, report=lambda m, thunk: states.setdefault(m["epoch"], thunk()))
    assert full.run.optimizer.param_groups[0]["fused"] is True
    cpu_written = round_trip(states[1])
    for group in cpu_written["optimizer"]["param_groups"]:
        group["fused"] = None  # what torch's CPU default writes
    policies = []
    policy = torch.optim.Optimizer._process_value_according_to_param_policy

    def spy(param, value, param_id, param_groups, key=None):
        if key == "step":
            group = next(g for g in param_groups if param_id in g["params"])
            policies.append(group["fused"])
        return policy(param, value, param_id, param_groups, key)

    monkeypatch.setattr(torch.optim.Optimizer, "_process_value_according_to_param_policy", spy)
    run = build_run(cfg, to_device(bundled, cfg.data, torch.device("cpu")))
    run.load_state_dict(round_trip(cpu_written))
    assert policies and set(policies) == {True}  # loaded under our kernel's placement policy
    for param, state in run.optimizer.state.items():
        assert state["step"].device == param.device and state["step"].dtype == torch.float32
    assert run.optimizer.param_groups[0]["fused"] is True
    resumed = fit(cfg, bundled, resume=cpu_written)
    assert without_timings(resumed.history) == without_timings(full.history)


def test_the_test_set_is_scored_in_the_precision_the_model_trained_in(bundled, monkeypatch):
    # Trained where `precision: auto` meant fp32, scored where it means bf16 (a GPU): the score
    # is the fp32 evaluation, from the precision the checkpoint records.
    monkeypatch.setattr(device, "native_bf16", lambda _device: False)
    cfg = quick_config(precision="auto", data__train_subset=128, data__val_size=50)
    trained = fit(cfg, bundled)
    state = round_trip(trained.run.state_dict())
    assert state["precision"] == "fp32"
    fp32 = evaluate(trained.run, trained.run.data.test_x, trained.run.data.test_y, "test")
    monkeypatch.setattr(device, "native_bf16", lambda _device: True)
    assert score_on_test(cfg, trained.run.data, state) == fp32
    # A checkpoint from before the record: the config's precision, resolved where it scores.
    old = {k: v for k, v in state.items() if k != "precision"}
    bf16 = score_on_test(cfg, trained.run.data, old)
    assert bf16 != fp32
    as_bf16 = cfg.model_copy(update={"precision": "bf16"})
    assert bf16 == score_on_test(as_bf16, trained.run.data, old)


def test_the_test_set_reaches_the_device_only_when_scored(bundled):
    cfg = quick_config(data__train_subset=128, data__val_size=50)
    data = to_device(bundled, cfg.data, torch.device("cpu"))
    result = fit(cfg, data)
    assert not data.test_on_device  # eval_test is off: trained and validated without it
    score_on_test(cfg, data, result.run.state_dict())
    assert data.test_on_device
    with_test = to_device(bundled, cfg.data, torch.device("cpu"))
    fit(cfg.model_copy(update={"eval_test": True}), with_test)
    assert with_test.test_on_device


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_onecycle_builds_for_runs_of_a_few_steps(steps):
    # 4 steps at pct_start 0.25 once made torch's warm-up span zero steps: ZeroDivisionError.
    cfg = quick_config(schedule__name="onecycle")
    cpu = torch.device("cpu")
    optimizer = optim.build_optimizer(cfg.optim, iter([nn.Parameter(torch.ones(1))]), cpu)
    scheduler = optim.build_scheduler(cfg.schedule, optimizer, epochs=1, steps_per_epoch=steps)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()


def test_every_optimizer_and_schedule_the_config_names_has_a_builder_and_no_other_falls_through():
    assert set(optim.OPTIMIZERS) == set(get_args(OptimizerName))
    assert set(optim.SCHEDULES) == set(get_args(ScheduleName))
    p = nn.Parameter(torch.zeros(1))
    unvalidated = quick_config().optim.model_copy(update={"name": "lion"})
    with pytest.raises(ConfigError, match=r"optim.name = 'lion': unknown; one of sgd, momentum"):
        optim.build_optimizer(unvalidated, iter([p]), torch.device("cpu"))
    sgd = optim.build_optimizer(quick_config().optim, iter([p]), torch.device("cpu"))
    schedule = quick_config().schedule.model_copy(update={"name": "warmup"})
    with pytest.raises(ConfigError, match=r"schedule.name = 'warmup': unknown; one of constant"):
        optim.build_scheduler(schedule, sgd, epochs=2, steps_per_epoch=2)
