"""The training loop: plain PyTorch functions that return metric dicts. No printing, no Ray.

``fit`` calls ``report(metrics, state)`` once per epoch with flat, stable metric names and a
thunk that builds a full checkpoint (model, optimizer, scheduler, RNG states, history), so a run
resumed from that checkpoint reproduces the uninterrupted run's metrics on the same device.
Accuracies are percentages; losses are mean cross-entropy in nats.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, OptimConfig, ScheduleConfig, TrialConfig
from .data import CifarArrays, DeviceData, to_device
from .model import build_model
from .transforms import (
    Normalizer,
    Transform,
    build_augment,
    center_crop,
    fit_normalizer,
    to_float,
)

Metrics = dict[str, Any]
StateThunk = Callable[[], dict[str, Any]]
Reporter = Callable[[Metrics, StateThunk], None]
Progress = Callable[[int, int], None]  # (images done, images per epoch)

# A mean batch loss above this many nats is treated like a non-finite one: the net has blown up
# (chance level is ln 10 = 2.3), and waiting for the NaN only burns compute.
DIVERGENCE_LOSS = 1e3
# How often (in batches) the running loss is checked for divergence; each check syncs the device.
DIVERGENCE_CHECK_EVERY = 25
EVAL_BATCH = 1000


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda requested but no CUDA device is visible; use --device cpu")
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


def build_optimizer(cfg: OptimConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    momentum = cfg.resolved_momentum
    wd = cfg.weight_decay
    if cfg.name in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=momentum, weight_decay=wd, nesterov=cfg.name == "nesterov"
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=momentum, weight_decay=wd)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)


def build_scheduler(
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Epoch-stepped schedules, except one-cycle which is stepped every batch."""
    sched = torch.optim.lr_scheduler
    if cfg.name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=base * cfg.min_lr_ratio)
    if cfg.name == "onecycle":
        return sched.OneCycleLR(
            optimizer,
            max_lr=optimizer.param_groups[0]["lr"],
            total_steps=epochs * steps_per_epoch,
            pct_start=cfg.pct_start,
        )
    return sched.LambdaLR(optimizer, lambda _: 1.0)


@dataclass
class Run:
    """The mutable state of one training run; everything a checkpoint must hold."""

    config: TrialConfig
    data: DeviceData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    normalizer: Normalizer
    augment: Transform
    generator: torch.Generator
    epoch: int = 0
    history: list[Metrics] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.data.device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if resolve_precision(self.config.precision, self.device) == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float batch in [0, 1] -> normalized, in the memory layout the model runs fastest in."""
        x = self.normalizer(images)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def state_dict(self) -> dict[str, Any]:
        """A deep copy: the caller may keep it while training goes on mutating the live tensors."""
        state = {
            "epoch": self.epoch,
            "history": list(self.history),
            "config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def input_size(config: TrialConfig) -> int:
    """Side of the images the model sees: the random-crop size, else the full 32."""
    return config.data.crop_size if "crop" in config.data.augment else 32


def build_run(config: TrialConfig, data: DeviceData) -> Run:
    """Seeded model, optimizer, schedule and transforms for `config` on `data`'s device."""
    torch.manual_seed(config.seed)
    image_size = input_size(config)
    model = build_model(config.model, image_size=image_size).to(data.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optim, model.parameters())
    steps = math.ceil(len(data.train_y) / config.batch_size)
    scheduler = build_scheduler(
        config.schedule, optimizer, epochs=config.epochs, steps_per_epoch=steps
    )
    normalizer = fit_normalizer(
        data.train_x, config.data.normalize, zca_epsilon=config.data.zca_epsilon
    )
    generator = torch.Generator(device=data.device)
    generator.manual_seed(config.seed)
    return Run(
        config,
        data,
        model,
        optimizer,
        scheduler,
        normalizer.to(data.device),
        build_augment(config.data),
        generator,
    )


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top5 = logits.topk(5, dim=1).indices == labels[:, None]
    return top5[:, 0].sum(), top5.any(dim=1).sum()


def train_one_epoch(run: Run, progress: Progress | None = None) -> Metrics:
    """One pass over the shuffled training split. Sums stay on the device; one sync at the end
    (plus one every DIVERGENCE_CHECK_EVERY batches), so the GPU is never stalled per batch."""
    data, cfg = run.data, run.config
    run.model.train()
    onecycle = cfg.schedule.name == "onecycle"
    order = torch.randperm(len(data.train_y), generator=run.generator, device=run.device)
    loss_sum = torch.zeros((), device=run.device)
    top1 = torch.zeros((), device=run.device, dtype=torch.long)
    top5 = torch.zeros_like(top1)
    seen = 0
    diverged = False
    initial: Metrics = {}
    start = time.perf_counter()
    for step, index in enumerate(order.split(cfg.batch_size)):
        labels = data.train_y[index]
        x = run.model_input(run.augment(to_float(data.train_x[index]), run.generator))
        with run.autocast():
            logits = run.model(x)
        loss = F.cross_entropy(logits.float(), labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if onecycle:
            run.scheduler.step()
        loss_sum += loss.detach() * len(labels)
        c1, c5 = _topk_correct(logits.detach(), labels)
        if run.epoch == 0 and step == 0:
            # The untrained network on its first batch (seed Q17): chance is ln 10, 10%, 50%.
            initial = {
                "init/loss": loss.item(),
                "init/top1": 100.0 * c1.item() / len(labels),
                "init/top5": 100.0 * c5.item() / len(labels),
            }
        top1 += c1
        top5 += c5
        seen += len(labels)
        if progress is not None:
            progress(seen, len(order))
        if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not _finite_and_bounded(loss_sum / seen):
            diverged = True
            break
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - start
    mean_loss = (loss_sum / seen).item()
    return {
        "train/loss": mean_loss,
        "train/top1": 100.0 * top1.item() / seen,
        "train/top5": 100.0 * top5.item() / seen,
        "time/train_s": seconds,
        "time/images_per_s": seen / seconds,
        "diverged": diverged or not _finite_and_bounded(torch.tensor(mean_loss)),
        **initial,
    }


def _finite_and_bounded(loss: torch.Tensor) -> bool:
    value = float(loss)
    return math.isfinite(value) and value < DIVERGENCE_LOSS


@torch.inference_mode()
def evaluate(run: Run, images: torch.Tensor, labels: torch.Tensor, prefix: str) -> Metrics:
    """Mean loss, top-1 and top-5 (percent) of the model in eval mode, under ``prefix/``."""
    run.model.eval()
    crop = input_size(run.config)
    loss_sum = torch.zeros((), device=run.device)
    top1 = torch.zeros((), device=run.device, dtype=torch.long)
    top5 = torch.zeros_like(top1)
    for batch_x, batch_y in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH), strict=True):
        x = run.model_input(center_crop(to_float(batch_x), crop))
        with run.autocast():
            logits = run.model(x).float()
        loss_sum += F.cross_entropy(logits, batch_y, reduction="sum")
        c1, c5 = _topk_correct(logits, batch_y)
        top1 += c1
        top5 += c5
    n = len(labels)
    return {
        f"{prefix}/loss": (loss_sum / n).item(),
        f"{prefix}/top1": 100.0 * top1.item() / n,
        f"{prefix}/top5": 100.0 * top5.item() / n,
    }


def run_epoch(run: Run, *, with_test: bool, progress: Progress | None = None) -> Metrics:
    """Train one epoch, step the schedule, score validation (and test), return the epoch's row."""
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    metrics: Metrics = {"epoch": run.epoch + 1, "lr": lr}
    metrics.update(train_one_epoch(run, progress))
    if run.config.schedule.name != "onecycle":
        run.scheduler.step()
    metrics.update(evaluate(run, run.data.val_x, run.data.val_y, "val"))
    if with_test:
        metrics.update(evaluate(run, run.data.test_x, run.data.test_y, "test"))
    metrics["time/epoch_s"] = time.perf_counter() - start
    run.epoch += 1
    run.history.append(metrics)
    return metrics


@dataclass(frozen=True)
class FitResult:
    status: Literal["completed", "diverged"]
    history: list[Metrics]
    run: Run


def fit(
    config: TrialConfig,
    data: CifarArrays | DeviceData,
    *,
    report: Reporter | None = None,
    resume: dict[str, Any] | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train `config` for ``config.epochs`` epochs (from `resume`'s epoch when given).

    Stops early with status ``diverged`` when the loss becomes non-finite or explodes; the epochs
    so far are kept in the history and were already reported.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if isinstance(data, CifarArrays):
        data = to_device(data, config.data, device or resolve_device(config.device))
    run = build_run(config, data)
    if resume is not None:
        run.load_state_dict(resume)
    status: Literal["completed", "diverged"] = "completed"
    if run.history and run.history[-1].get("diverged"):
        status = "diverged"
    while status == "completed" and run.epoch < config.epochs:
        metrics = run_epoch(run, with_test=config.eval_test, progress=progress)
        if report is not None:
            report(metrics, run.state_dict)
        if metrics["diverged"]:
            status = "diverged"
    return FitResult(status, list(run.history), run)


def score_on_test(config: TrialConfig, data: DeviceData, state: dict[str, Any]) -> Metrics:
    """Test-set loss/top-1/top-5 of the model saved in checkpoint `state` (normalizer refitted on
    the same training split, so the input pipeline matches the one it was trained with)."""
    run = build_run(config, data)
    run.model.load_state_dict(state["model"])
    return evaluate(run, data.test_x, data.test_y, "test")
