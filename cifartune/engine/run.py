"""A training run's state: the model on its device with its input pipeline and precision
(:class:`Model`, what scoring needs) and everything a checkpoint holds (:class:`Run`).

A checkpoint loads on any device (CUDA -> CPU, one GPU -> another); across device types the
augmentation and dropout generators are reseeded from (seed, epoch), because a CUDA generator's
Philox state has no CPU equivalent: the resumed run is then reproducible but not identical to
the uninterrupted one.

On CUDA, exact reproducibility rests on cuDNN's deterministic convolution algorithms (set by
:func:`build_model_for`; autotuning is off) and on cuBLAS, fused optimizers and the batched
transforms being deterministic on one stream. ``torch.use_deterministic_algorithms`` is not
switched on: it would also demand a cuBLAS workspace setting before CUDA starts, which a library
cannot promise.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from cifartune.config.trial import TrialConfig
from cifartune.engine.device import resolve_precision
from cifartune.engine.model import build_model, compiled_forward
from cifartune.engine.optim import build_optimizer, build_scheduler
from cifartune.engine.splits import DeviceData
from cifartune.engine.transforms import (
    Normalizer,
    Transform,
    build_augment,
    fit_normalizer,
)

log = logging.getLogger(__name__)
Metrics = dict[str, Any]
StateThunk = Callable[[], dict[str, Any]]  # builds a full checkpoint of the run, when asked


@dataclass
class Model:
    """A model on its device with the input pipeline and precision it runs in: what scoring
    needs, built without an optimizer (a process's first torch optimizer imports
    torch._dynamo, about 2 s the study driver would pay only to score)."""

    config: TrialConfig
    data: DeviceData
    model: nn.Module
    normalizer: Normalizer
    # `config.precision` resolved on this device; saved with the checkpoint, so the test
    # scoring later runs in the precision the model trained in, whatever device scores it.
    precision: str

    @property
    def device(self) -> torch.device:
        return self.data.device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float batch in [0, 1] -> normalized, in the memory layout the model runs fastest in."""
        x = self.normalizer(images)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@dataclass
class Run(Model):
    """The mutable state of one training run; everything a checkpoint must hold."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augment: Transform
    generator: torch.Generator
    # The model, or its compiled forward (``config.compile``), for full training batches.
    train_forward: Callable[[torch.Tensor], torch.Tensor]
    epoch: int = 0
    history: list[Metrics] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """A deep copy: the caller may keep it while training goes on mutating the live tensors.

        RNG states are CPU byte tensors tagged with the device type whose generators made them.
        """
        rng = {
            "device_type": self.device.type,
            "generator": self.generator.get_state(),
            "cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "epoch": self.epoch,
            "history": list(self.history),
            "config": self.config.model_dump(mode="json"),
            "precision": self.precision,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`, whichever device wrote it (see the module docstring)."""
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(_with_our_kernels(state["optimizer"], self.optimizer))
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["cpu"].cpu())
        if rng["device_type"] == self.device.type:
            self.generator.set_state(rng["generator"].cpu())
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
            return
        seed = epoch_seed(self.config.seed, self.epoch)
        log.warning(
            "checkpoint of epoch %d was written on %s, resuming on %s: the augmentation and "
            "dropout generators are reseeded from (seed %d, epoch %d), so the run is "
            "reproducible but does not repeat the uninterrupted one exactly",
            self.epoch,
            rng["device_type"],
            self.device.type,
            self.config.seed,
            self.epoch,
        )
        self.generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # dropout on CUDA draws from the default CUDA generator


def _with_our_kernels(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`saved` with `optimizer`'s kernel flags (fused, foreach, capturable) in its param groups.

    The saved groups carry the writer's choice (a CPU writes fused=None). torch places each
    ``step`` tensor by the flags of the groups it loads: a fused or capturable kernel wants it
    as float32 on the parameter's device, the others on the CPU. Flags set after loading would
    leave a CPU-written ``step`` on the CPU, and a fused CUDA step then fails with "Expected
    all tensors to be on the same device" (PyTorch issue 124133)."""
    groups = [
        {**g, **{k: ours[k] for k in ("fused", "foreach", "capturable") if k in ours}}
        for g, ours in zip(saved["param_groups"], optimizer.param_groups, strict=True)
    ]
    return {**saved, "param_groups": groups}


def epoch_seed(seed: int, epoch: int) -> int:
    """A generator seed for resuming `seed`'s run at `epoch` on another device type."""
    return (seed * 1_000_003 + epoch) % 2**63


def input_size(config: TrialConfig) -> int:
    """Side of the images the model sees: the random-crop size, else the full 32."""
    return config.data.crop_size if "crop" in config.data.augment else 32


def build_model_for(config: TrialConfig, data: DeviceData) -> Model:
    """The seeded model of `config` on `data`'s device, with its input pipeline."""
    torch.manual_seed(config.seed)
    if data.device.type == "cuda":
        # Deterministic cuDNN algorithms, chosen without timing them: a resumed run must repeat
        # the uninterrupted one bit for bit. Process-wide, like every cuDNN setting.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    model = build_model(config.model, image_size=input_size(config)).to(data.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalizer = fit_normalizer(
        data.train_x, config.data.normalize, zca_epsilon=config.data.zca_epsilon
    )
    precision = resolve_precision(config.precision, data.device)
    return Model(config, data, model, normalizer.to(data.device), precision)


def build_run(config: TrialConfig, data: DeviceData) -> Run:
    """Seeded model, optimizer, schedule and transforms for `config` on `data`'s device."""
    base = build_model_for(config, data)
    optimizer = build_optimizer(config.optim, base.model.parameters(), data.device)
    steps = math.ceil(len(data.train_y) / config.batch_size)
    scheduler = build_scheduler(
        config.schedule, optimizer, epochs=config.epochs, steps_per_epoch=steps
    )
    generator = torch.Generator(device=data.device)
    generator.manual_seed(config.seed)
    return Run(
        **{f.name: getattr(base, f.name) for f in fields(Model)},
        optimizer=optimizer,
        scheduler=scheduler,
        augment=build_augment(config.data),
        generator=generator,
        train_forward=compiled_forward(base.model, config.compile, data.device),
    )


# What can change in a run that goes on from its state (population-based training's exploit and
# explore, a replayed schedule): the optimizer's hyperparameters, dropout, augmentation strength.
# The config layer refuses any other key for PBT (config.sections.MUTABLE_KEYS).
def hyperparameters(config: TrialConfig) -> dict[str, Any]:
    """The values of `config` that a running run can take on (see :func:`set_hyperparameters`)."""
    data = config.data
    return {
        "optim.lr": config.optim.lr,
        "optim.momentum": config.optim.resolved_momentum,
        "optim.weight_decay": config.optim.weight_decay,
        "model.dropout": config.model.dropout,
        "data": data.model_dump(include={"crop_padding", "cutout_size", "rotate_degrees",
                                         "jitter_brightness", "jitter_contrast",
                                         "jitter_saturation", "jitter_hue"}),
    }  # fmt: skip


def set_hyperparameters(run: Run, config: TrialConfig) -> None:
    """Make `run` go on with `config`'s hyperparameters (:func:`hyperparameters`): the learning
    rate, momentum and weight decay of every parameter group (and the base rate a constant
    schedule multiplies, which would put the old rate back at its next step), dropout's p, the
    augmentation's strength. Weights, optimizer moments and the epoch count stay."""
    values = hyperparameters(config)
    for group in run.optimizer.param_groups:
        group["lr"] = values["optim.lr"]
        group["weight_decay"] = values["optim.weight_decay"]
        if "momentum" in group:
            group["momentum"] = values["optim.momentum"]
    if hasattr(run.scheduler, "base_lrs"):
        run.scheduler.base_lrs = [values["optim.lr"]] * len(run.optimizer.param_groups)
    for module in run.model.modules():
        if isinstance(module, nn.Dropout):
            module.p = values["model.dropout"]
    run.augment = build_augment(config.data)
    run.config = config
