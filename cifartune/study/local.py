"""One configuration trained in this process, without Ray: ``cifartune train``.

The output directory holds ``config.yaml`` (the resolved config), ``metrics.parquet`` (one row
per finished epoch, rewritten atomically after each) and ``checkpoint.pt`` (the latest epoch),
so an interrupted run keeps its epochs and ``--resume`` continues it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cifartune.config.base import flatten
from cifartune.config.files import dump_yaml, read_yaml
from cifartune.config.trial import EFFECTIVE_KEY, TrialConfig
from cifartune.engine.data import load_arrays
from cifartune.engine.device import resolve_device
from cifartune.engine.effective import effective_settings
from cifartune.engine.loop import CpuClock, FitResult, fit
from cifartune.engine.run import Metrics, StateThunk
from cifartune.engine.splits import to_device
from cifartune.errors import ConfigError
from cifartune.store.checkpoints import load_state, save_state
from cifartune.store.columns import effective_columns, epoch_records
from cifartune.store.tables import write_records

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.parquet"
CHECKPOINT_FILE = "checkpoint.pt"


def train_local(
    config: TrialConfig,
    out: Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[Metrics], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Train `config`, writing metrics and a checkpoint into `out` after every epoch."""
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_FILE
    state = None
    if resume:
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: no {CHECKPOINT_FILE} in {out}; nothing to resume")
        saved = read_yaml(out / CONFIG_FILE)
        saved.pop(EFFECTIVE_KEY, None)
        if saved != config.model_dump(mode="json"):
            raise ConfigError(
                f"--resume: the config differs from {out / CONFIG_FILE}; resume with the same "
                "config (or no --config/--set) or use a new --out"
            )
        state = load_state(checkpoint)
    elif checkpoint.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or a new --out")
    device = resolve_device(config.device)
    data = to_device(load_arrays(config.data), config.data, device)
    ran = effective_settings(config, data)
    effective = effective_columns(ran)
    dump_yaml(config, out / CONFIG_FILE, extra={EFFECTIVE_KEY: ran})
    flat = flatten(config)
    cpu = CpuClock()

    def report(metrics: Metrics, thunk: StateThunk) -> None:
        cpu.measure(metrics)
        run_state = thunk()
        write_records(epoch_records(run_state["history"], flat, **effective), out / METRICS_FILE)
        save_state(run_state, checkpoint)
        if on_epoch is not None:
            on_epoch(metrics)

    return fit(config, data, report=report, resume=state, progress=progress)
