"""The training loop: plain PyTorch functions that return metric dicts. No printing, no Ray.

``fit`` calls ``report(metrics, state)`` once per epoch with flat, stable metric names and a
thunk that builds a full checkpoint (model, optimizer, scheduler, RNG states, history), so a run
resumed from that checkpoint reproduces the uninterrupted run's metrics on the same device type
(see :mod:`.run`). Accuracies are percentages; losses are mean cross-entropy in nats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cifartune.config.trial import TrialConfig
from cifartune.engine.data import CifarArrays
from cifartune.engine.device import DEFAULT_THREADS, resolve_device
from cifartune.engine.run import (
    Metrics,
    Model,
    Run,
    StateThunk,
    build_model_for,
    build_run,
    hyperparameters,
    input_size,
    set_hyperparameters,
)
from cifartune.engine.splits import DeviceData, to_device
from cifartune.engine.transforms import (
    center_crop,
    to_float,
)

Reporter = Callable[[Metrics, StateThunk], None]
Progress = Callable[[int, int], None]  # (images done, images per epoch)
# A mean batch loss above this many nats is treated like a non-finite one: the net has blown up
# (chance level is ln 10 = 2.3), and waiting for the NaN only burns compute.
DIVERGENCE_LOSS = 1e3
# How often (in batches) the running loss is checked for divergence; each check syncs the device.
DIVERGENCE_CHECK_EVERY = 25
EVAL_BATCH = 1000


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
    graphs = cfg.compile == "cudagraphs" and run.device.type == "cuda"
    for step, index in enumerate(order.split(cfg.batch_size)):
        labels = data.train_y[index]
        x = run.model_input(run.augment(to_float(data.train_x[index]), run.generator))
        # The compiled forward is built for full batches; the last, partial one runs eager.
        forward = run.train_forward if len(index) == cfg.batch_size else run.model
        if graphs:
            # A new iteration: the graphs may overwrite the previous step's outputs, which
            # nothing reads any more (the sums below are fresh tensors).
            torch.compiler.cudagraph_mark_step_begin()
        with run.autocast():
            logits = forward(x)
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
def evaluate(run: Model, images: torch.Tensor, labels: torch.Tensor, prefix: str) -> Metrics:
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


def config_in_force(
    config: TrialConfig, schedule: Mapping[int, TrialConfig] | None, epoch: int
) -> TrialConfig:
    """The config `epoch` trains with under `schedule` (see :func:`fit`): its latest entry at
    or before `epoch`, else `config`."""
    started = [e for e in schedule or {} if e <= epoch]
    return schedule[max(started)] if schedule and started else config


def fit(
    config: TrialConfig,
    data: CifarArrays | DeviceData,
    *,
    report: Reporter | None = None,
    resume: dict[str, Any] | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
    schedule: Mapping[int, TrialConfig] | None = None,
) -> FitResult:
    """Train `config` for ``config.epochs`` epochs (from `resume`'s epoch when given).

    A `resume` state saved under other hyperparameters than `config`'s (a PBT trial that took
    another's state) goes on with `config`'s (:func:`~.run.set_hyperparameters`); `schedule`
    gives the config to train each listed epoch (1-based) with, from that epoch on (a replayed
    PBT schedule). Stops early with status ``diverged`` when the loss becomes non-finite or
    explodes; the epochs so far are kept in the history and were already reported.
    """
    # Set every time: a reused trial process keeps the previous trial's thread count.
    torch.set_num_threads(config.threads or DEFAULT_THREADS)
    if isinstance(data, CifarArrays):
        data = to_device(data, config.data, device or resolve_device(config.device))
    run = build_run(config, data)
    if resume is not None:
        run.load_state_dict(resume)
        going_on = config_in_force(config, schedule, run.epoch)
        saved = TrialConfig.model_validate(resume["config"]) if "config" in resume else going_on
        if hyperparameters(saved) != hyperparameters(going_on):
            set_hyperparameters(run, going_on)
    status: Literal["completed", "diverged"] = "completed"
    if run.history and run.history[-1].get("diverged"):
        status = "diverged"
    while status == "completed" and run.epoch < config.epochs:
        if schedule is not None and run.epoch + 1 in schedule:
            set_hyperparameters(run, schedule[run.epoch + 1])
        metrics = run_epoch(run, with_test=config.eval_test, progress=progress)
        if report is not None:
            report(metrics, run.state_dict)
        if metrics["diverged"]:
            status = "diverged"
    return FitResult(status, list(run.history), run)


def score_on_test(config: TrialConfig, data: DeviceData, state: dict[str, Any]) -> Metrics:
    """Test-set loss/top-1/top-5 of the model saved in checkpoint `state` (normalizer refitted on
    the same training split, so the input pipeline matches the one it was trained with), in
    the precision it trained in (`config`'s, resolved here, for a checkpoint that predates
    that record)."""
    scored = build_model_for(config, data)
    scored.precision = state.get("precision", scored.precision)
    scored.model.load_state_dict(state["model"])
    return evaluate(scored, data.test_x, data.test_y, "test")


class CpuClock:
    """CPU seconds this process used per epoch (all its threads: data, training, evaluation,
    checkpoints), measured between two epochs' reports: ``time/cpu_s``."""

    def __init__(self) -> None:
        self.last = time.process_time()

    def measure(self, metrics: dict[str, Any]) -> None:
        # Into the epoch's own metrics dict, which the run's history holds: a checkpoint keeps
        # it, so a row rebuilt from one has it too.
        now = time.process_time()
        metrics["time/cpu_s"], self.last = now - self.last, now
