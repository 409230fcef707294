"""The device copy of the data and the compile options, checked on the CPU: full batches take
the compiled forward, the compiler falls back to eager where it cannot run, a compiled run
trains like eager and resumes exactly."""

import logging

import numpy as np
import pytest
import torch

from cifartune.config.trial import DataConfig
from cifartune.engine import model
from cifartune.engine.loop import fit, train_one_epoch
from cifartune.engine.run import build_run
from cifartune.engine.splits import split_indices, to_device

from ..support import quick_config, round_trip, synthetic_arrays, without_timings


def test_device_data_is_contiguous_nchw_uint8_of_the_split():
    arrays = synthetic_arrays(200, 30)
    cfg = DataConfig(val_size=50, train_subset=100)
    data = to_device(arrays, cfg, torch.device("cpu"))
    split = split_indices(arrays.train_labels, cfg)
    expected = {
        "train": (arrays.train_images[split.train], arrays.train_labels[split.train]),
        "val": (arrays.train_images[split.val], arrays.train_labels[split.val]),
        "test": (arrays.test_images, arrays.test_labels),
    }
    for name, (images, labels) in expected.items():
        x, y = getattr(data, f"{name}_x"), getattr(data, f"{name}_y")
        assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape == (len(images), 3, 32, 32)
        assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))
        assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels))
    read_only = synthetic_arrays(40, 10)
    read_only.train_images.flags.writeable = False  # what Ray's object store hands out
    copy = to_device(read_only, DataConfig(val_size=10), torch.device("cpu"))
    copy.train_x.zero_()  # its own memory: the shared array is untouched
    assert np.any(read_only.train_images)


def test_only_full_batches_take_the_compiled_forward():
    # 100 images in batches of 64: one full batch (compiled forward), one partial (eager).
    cfg = quick_config(data__val_size=10, precision="fp32")
    run = build_run(cfg, to_device(synthetic_arrays(110, 10), cfg.data, torch.device("cpu")))
    sizes = []

    def forward(x):
        sizes.append(len(x))
        return run.model(x)

    run.train_forward = forward
    train_one_epoch(run)
    assert sizes == [64]


def test_compile_falls_back_to_eager_where_it_cannot_run(monkeypatch, caplog):
    net = torch.nn.Linear(2, 2)
    cpu = torch.device("cpu")
    assert model.compiled_forward(net, "none", cpu) is net
    monkeypatch.setattr(model.shutil, "which", lambda _name: None)
    with caplog.at_level(logging.WARNING, logger="cifartune.engine.model"):
        assert model.compiled_forward(net, "model", cpu) is net
    assert "no C++ compiler" in caplog.text and "runs eager" in caplog.text


def test_cuda_graphs_on_a_cpu_are_compile_model_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="cifartune.engine.model"):
        forward = model.compiled_forward(torch.nn.Linear(2, 2), "cudagraphs", torch.device("cpu"))
    assert "CUDA graphs apply on CUDA only" in caplog.text
    assert forward is not None and not isinstance(forward, torch.nn.Linear)


@pytest.mark.slow
def test_a_compiled_run_trains_like_eager_and_resumes_exactly():
    # torch.compile on the CPU (inductor's C++ kernels): the same network, so the same losses
    # up to the order of floating-point sums; and a resumed compiled run repeats itself.
    common = {"epochs": 2, "data__train_subset": 256, "data__val_size": 50, "precision": "fp32"}
    arrays = synthetic_arrays(400, 20)
    eager = fit(quick_config(**common), arrays).history
    states = {}
    cfg = quick_config(compile="model", **common)
    compiled = fit(cfg, arrays, report=lambda m, t: states.setdefault(m["epoch"], t())).history
    for a, b in zip(eager, compiled, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-4)
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=1e-4)
    resumed = fit(cfg, arrays, resume=round_trip(states[1])).history
    assert without_timings(resumed) == without_timings(compiled)
