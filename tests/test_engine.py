import math

import numpy as np
import pytest
import torch

from cifartune.config import DataConfig
from cifartune.data import CifarArrays, load_bundled, to_device
from cifartune.engine import build_run, fit, resolve_precision

from .helpers import quick_config, synthetic_arrays

TIMING = ("time/train_s", "time/epoch_s", "time/images_per_s")


def without_timings(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


def test_reports_every_epoch_with_the_stable_metric_names(bundled):
    config = quick_config(epochs=2, eval_test=True, data__train_subset=200)
    seen = []
    result = fit(config, bundled, report=lambda m, state: seen.append((m, state)))
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
    config = quick_config(optim__lr=1e-6, data__train_subset=500)
    result = fit(config, bundled)
    assert result.history[0]["init/loss"] == pytest.approx(math.log(10), abs=0.1)
    assert result.history[0]["train/loss"] == pytest.approx(math.log(10), abs=0.05)
    assert result.history[0]["val/top1"] == pytest.approx(10, abs=6)
    assert result.history[0]["val/top5"] == pytest.approx(50, abs=15)


def test_a_tiny_subset_can_be_overfit(bundled):
    config = quick_config(
        epochs=30, batch_size=25, data__train_subset=50, optim__name="adam", optim__lr=1e-3
    )
    result = fit(config, bundled)
    assert result.history[-1]["train/top1"] >= 98
    assert result.history[-1]["train/loss"] < 0.1


def test_same_seed_same_run_and_other_seed_differs(bundled):
    config = quick_config(
        epochs=2, data__train_subset=200, data__augment="crop+flip", model__dropout=0.3
    )
    a = without_timings(fit(config, bundled).history)
    b = without_timings(fit(config, bundled).history)
    c = without_timings(fit(config.model_copy(update={"seed": 1}), bundled).history)
    assert a == b
    assert a != c


@pytest.mark.parametrize("schedule", ["exponential", "onecycle"])
def test_resumed_run_matches_an_uninterrupted_one(bundled, schedule):
    config = quick_config(
        epochs=4,
        data__train_subset=200,
        data__augment="crop+flip+cutout",
        model__dropout=0.5,
        model__batchnorm=True,
        optim__name="momentum",
        schedule__name=schedule,
    )
    states = {}
    full = fit(config, bundled, report=lambda m, thunk: states.setdefault(m["epoch"], thunk()))
    # Round-trip the epoch-2 checkpoint through torch.save as a real resume would.
    import io

    buffer = io.BytesIO()
    torch.save(states[2], buffer)
    buffer.seek(0)
    resumed = fit(config, bundled, resume=torch.load(buffer, weights_only=False))
    assert without_timings(resumed.history) == without_timings(full.history)
    assert len(resumed.history) == 4


def test_learning_rate_schedule_is_applied_per_epoch(bundled):
    config = quick_config(
        epochs=3, data__train_subset=100, schedule__name="exponential", schedule__gamma=0.5
    )
    lrs = [m["lr"] for m in fit(config, bundled).history]
    assert lrs == pytest.approx([0.1, 0.05, 0.025])


def test_diverging_run_ends_as_diverged_and_keeps_its_epochs(bundled):
    config = quick_config(epochs=6, optim__lr=5.0, batch_size=128)
    reported = []
    result = fit(config, bundled, report=lambda m, _: reported.append(m))
    assert result.status == "diverged"
    assert len(result.history) < 6
    assert reported == result.history
    assert reported[-1]["diverged"] is True
    assert all(m["diverged"] is False for m in reported[:-1])


def test_every_optimizer_and_schedule_trains(bundled):
    for name in ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"):
        lr = 0.01 if name in ("sgd", "momentum", "nesterov", "adagrad") else 1e-3
        for schedule in ("constant", "step", "cosine"):
            config = quick_config(
                epochs=1,
                data__train_subset=50,
                optim__name=name,
                optim__lr=lr,
                optim__weight_decay=1e-4,
                schedule__name=schedule,
            )
            assert fit(config, bundled).status == "completed"


def test_normalizer_is_fitted_on_the_training_split_only():
    arrays = synthetic_arrays(200, 50)
    # Make validation and test images wildly different from training: statistics must ignore them.
    bright = CifarArrays(
        arrays.train_images,
        arrays.train_labels,
        np.full_like(arrays.test_images, 255),
        arrays.test_labels,
        "x",
    )
    data = to_device(bright, DataConfig(val_size=50, normalize="standardize"), torch.device("cpu"))
    run = build_run(quick_config(data__normalize="standardize", data__val_size=50), data)
    train_mean = data.train_x.float().div(255).mean((0, 2, 3))
    assert torch.allclose(run.normalizer.mean.flatten(), train_mean, atol=1e-4)


def test_auto_precision_is_fp32_on_a_cpu_without_native_bf16():
    cpu = torch.device("cpu")
    expected = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_bf16_autocast_trains(bundled):
    config = quick_config(epochs=1, data__train_subset=20, batch_size=10, precision="bf16")
    assert fit(config, bundled).status == "completed"


@pytest.mark.gpu
def test_cuda_run_keeps_data_on_the_gpu(bundled):
    config = quick_config(device="cuda", epochs=1, data__train_subset=200)
    result = fit(config, bundled)
    assert result.run.data.train_x.is_cuda and result.status == "completed"
