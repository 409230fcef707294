"""Optimizers and learning-rate schedules built from their config sections, each name in a
registry: a name without a builder fails loudly instead of falling through to another."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from cifartune.config.trial import OptimConfig, ScheduleConfig
from cifartune.errors import ConfigError

Sched = torch.optim.lr_scheduler
OptimizerBuilder = Callable[[OptimConfig, Iterator[nn.Parameter], bool | None], Optimizer]
ScheduleBuilder = Callable[[ScheduleConfig, Optimizer, int, int], Sched.LRScheduler]


def _sgd(cfg: OptimConfig, params: Iterator[nn.Parameter], fused: bool | None) -> Optimizer:
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.resolved_momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.name == "nesterov",
        fused=fused,
    )


def _adam(cfg: OptimConfig, params: Iterator[nn.Parameter], fused: bool | None) -> Optimizer:
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _rmsprop(cfg: OptimConfig, params: Iterator[nn.Parameter], fused: bool | None) -> Optimizer:
    return torch.optim.RMSprop(
        params, lr=cfg.lr, momentum=cfg.resolved_momentum, weight_decay=cfg.weight_decay
    )


def _adagrad(cfg: OptimConfig, params: Iterator[nn.Parameter], fused: bool | None) -> Optimizer:
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# Every ``optim.name`` the config accepts, and what builds it (a test holds the two together).
OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "sgd": _sgd, "momentum": _sgd, "nesterov": _sgd, "adam": _adam, "adamw": _adam,
    "rmsprop": _rmsprop, "adagrad": _adagrad,
}  # fmt: skip


def _registered(registry: Mapping[str, Any], field: str, name: str) -> Any:
    """`name`'s builder, or a ConfigError naming the field and the names there are (a config
    built without validation, or a registry behind the config's names)."""
    if name not in registry:
        raise ConfigError(f"{field} = {name!r}: unknown; one of {', '.join(registry)}")
    return registry[name]


def build_optimizer(
    cfg: OptimConfig,
    params: Iterator[nn.Parameter],
    device: torch.device,
    *,
    fused: bool | None = None,
) -> Optimizer:
    """The optimizer `cfg` names. On CUDA, SGD and Adam(W) use torch's fused kernels (one launch
    per step instead of several per tensor: the seed network is launch-bound on a GPU); RMSprop
    and Adagrad have no fused CUDA kernel and use the multi-tensor (foreach) path, torch's CUDA
    default. On the CPU torch's defaults stay. `fused` forces SGD's and Adam(W)'s choice (a
    test runs torch's fused CPU kernels with it)."""
    if fused is None:
        fused = True if device.type == "cuda" else None  # None: torch's own choice
    return _registered(OPTIMIZERS, "optim.name", cfg.name)(cfg, params, fused)


def _constant(
    cfg: ScheduleConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> Sched.LRScheduler:
    return Sched.LambdaLR(optimizer, lambda _: 1.0)


def _exponential(
    cfg: ScheduleConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> Sched.LRScheduler:
    return Sched.ExponentialLR(optimizer, gamma=cfg.gamma)


def _step(
    cfg: ScheduleConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> Sched.LRScheduler:
    return Sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)


def _cosine(
    cfg: ScheduleConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> Sched.LRScheduler:
    base = optimizer.param_groups[0]["lr"]
    return Sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=base * cfg.min_lr_ratio)


def _onecycle(
    cfg: ScheduleConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> Sched.LRScheduler:
    total = epochs * steps_per_epoch
    # torch's warm-up phase ends at step pct_start * total - 1: at exactly 1 step it spans
    # zero steps and OneCycleLR divides by zero (a tiny run: 4 steps at 25%); 2 steps then.
    pct = 2 / total if math.isclose(cfg.pct_start * total, 1) and total > 2 else cfg.pct_start
    return Sched.OneCycleLR(
        optimizer,
        max_lr=optimizer.param_groups[0]["lr"],
        total_steps=total,
        pct_start=pct,
        cycle_momentum=False,
    )


# Every ``schedule.name`` the config accepts, and what builds it.
SCHEDULES: dict[str, ScheduleBuilder] = {
    "constant": _constant, "exponential": _exponential, "step": _step, "cosine": _cosine,
    "onecycle": _onecycle,
}  # fmt: skip


def build_scheduler(
    cfg: ScheduleConfig, optimizer: Optimizer, *, epochs: int, steps_per_epoch: int
) -> Sched.LRScheduler:
    """Epoch-stepped schedules, except one-cycle which is stepped every batch.

    One-cycle leaves momentum alone (``cycle_momentum=False``): torch's default would rewrite
    SGD/RMSprop momentum and Adam's beta1 every step, ignore ``optim.momentum`` and fail on
    Adagrad, which has neither.
    """
    builder = _registered(SCHEDULES, "schedule.name", cfg.name)
    return builder(cfg, optimizer, epochs, steps_per_epoch)
