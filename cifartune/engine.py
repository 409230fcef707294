"""The training loop: plain PyTorch functions that return metric dicts. No printing, no Ray.

``fit`` calls ``report(metrics, state)`` once per epoch with flat, stable metric names and a
thunk that builds a full checkpoint (model, optimizer, scheduler, RNG states, history), so a run
resumed from that checkpoint reproduces the uninterrupted run's metrics on the same device type.
A checkpoint loads on any device (CUDA -> CPU, one GPU -> another); across device types the
augmentation and dropout generators are reseeded from (seed, epoch), because a CUDA generator's
Philox state has no CPU equivalent: the resumed run is then reproducible but not identical to
the uninterrupted one. Accuracies are percentages; losses are mean cross-entropy in nats.

On CUDA, exact reproducibility rests on cuDNN's deterministic convolution algorithms (set by
:func:`build_run`; autotuning is off) and on cuBLAS, fused optimizers and the batched transforms
being deterministic on one stream. ``torch.use_deterministic_algorithms`` is not switched on: it
would also demand a cuBLAS workspace setting before CUDA starts, which a library cannot promise.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, TrialConfig
from .data import CifarArrays, DeviceData, to_device
from .model import build_model, compiled_forward
from .optim import build_optimizer, build_scheduler
from .transforms import (
    Normalizer,
    Transform,
    build_augment,
    center_crop,
    fit_normalizer,
    to_float,
)

log = logging.getLogger(__name__)

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
# torch's own choice of CPU threads for this process, what `threads: null` means.
DEFAULT_THREADS = torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device = {name!r}: no CUDA device is visible to torch {torch.__version__} "
            "(torch.cuda.is_available() is False); use device=cpu (--device cpu) or device=auto"
        )
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
    # Set every time: a reused trial process keeps the previous trial's thread count.
    torch.set_num_threads(config.threads or DEFAULT_THREADS)
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
    the same training split, so the input pipeline matches the one it was trained with), in
    the precision it trained in (`config`'s, resolved here, for a checkpoint that predates
    that record)."""
    scored = build_model_for(config, data)
    scored.precision = state.get("precision", scored.precision)
    scored.model.load_state_dict(state["model"])
    return evaluate(scored, data.test_x, data.test_y, "test")
