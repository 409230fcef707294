"""Optimizers and learning-rate schedules built from their config sections."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from cifartune.config.trial import OptimConfig, ScheduleConfig


def build_optimizer(
    cfg: OptimConfig,
    params: Iterator[nn.Parameter],
    device: torch.device,
    *,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The optimizer `cfg` names. On CUDA, SGD and Adam(W) use torch's fused kernels (one launch
    per step instead of several per tensor: the seed network is launch-bound on a GPU); RMSprop
    and Adagrad have no fused CUDA kernel and use the multi-tensor (foreach) path, torch's CUDA
    default. On the CPU torch's defaults stay. `fused` forces SGD's and Adam(W)'s choice (a
    test runs torch's fused CPU kernels with it)."""
    momentum = cfg.resolved_momentum
    wd = cfg.weight_decay
    if fused is None:
        fused = True if device.type == "cuda" else None  # None: torch's own choice
    if cfg.name in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=momentum,
            weight_decay=wd,
            nesterov=cfg.name == "nesterov",
            fused=fused,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd, fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd, fused=fused)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=momentum, weight_decay=wd)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)


def build_scheduler(
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Epoch-stepped schedules, except one-cycle which is stepped every batch.

    One-cycle leaves momentum alone (``cycle_momentum=False``): torch's default would rewrite
    SGD/RMSprop momentum and Adam's beta1 every step, ignore ``optim.momentum`` and fail on
    Adagrad, which has neither.
    """
    sched = torch.optim.lr_scheduler
    if cfg.name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=base * cfg.min_lr_ratio)
    if cfg.name == "onecycle":
        total = epochs * steps_per_epoch
        # torch's warm-up phase ends at step pct_start * total - 1: at exactly 1 step it spans
        # zero steps and OneCycleLR divides by zero (a tiny run: 4 steps at 25%); 2 steps then.
        pct = 2 / total if math.isclose(cfg.pct_start * total, 1) and total > 2 else cfg.pct_start
        return sched.OneCycleLR(
            optimizer,
            max_lr=optimizer.param_groups[0]["lr"],
            total_steps=total,
            pct_start=pct,
            cycle_momentum=False,
        )
    return sched.LambdaLR(optimizer, lambda _: 1.0)
