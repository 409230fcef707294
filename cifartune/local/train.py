"""One configuration trained in this process, without Ray: ``cifartune train``.

The output directory holds ``config.yaml`` (the resolved config, and what really ran),
``checkpoint.pt`` (the latest epoch) and ``epochs/<epoch>-<writer>.parquet``, one file per
finished epoch as a study's trials write them (:mod:`cifartune.store.epochs`: never changed
once written), so an interrupted run keeps its epochs and ``--resume`` continues it. Each
epoch's checkpoint is written before its row: a resume writes the rows the checkpoint holds and
the files lack, and withdraws (into ``withdrawn/``) rows the checkpoint does not reach.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from cifartune.config.base import flatten
from cifartune.config.files import dump_yaml, read_yaml
from cifartune.config.trial import EFFECTIVE_KEY, TrialConfig
from cifartune.engine.data import load_arrays
from cifartune.engine.device import resolve_device
from cifartune.engine.effective import effective_settings
from cifartune.engine.loop import CpuClock, FitResult, config_in_force, fit
from cifartune.engine.run import Metrics, StateThunk
from cifartune.engine.splits import to_device
from cifartune.errors import ConfigError
from cifartune.storage import Location
from cifartune.store.checkpoints import load_state, save_state
from cifartune.store.columns import effective_columns, epoch_records
from cifartune.store.epochs import epoch_files, epoch_path, withdraw, write_epoch, writer_token
from cifartune.store.layout import EPOCHS_DIR, WITHDRAWN_DIR

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
# What a replayed run (``train --replay``) replays: the study's results and trial, for --resume.
REPLAY_FILE = "replay.yaml"


def train_local(
    config: TrialConfig,
    out: Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[Metrics], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    schedule: Mapping[int, TrialConfig] | None = None,
) -> FitResult:
    """Train `config`, writing metrics and a checkpoint into `out` after every epoch; `schedule`
    changes its hyperparameters from the epochs it names on (:func:`~cifartune.engine.loop.fit`).
    """
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
    flat_config = flatten(config)
    epochs, writer = Location.of(out / EPOCHS_DIR), writer_token()

    def write_row(metrics: Metrics) -> None:
        epoch = int(metrics["epoch"])
        flat = flatten(config_in_force(config, schedule, epoch)) if schedule else flat_config
        (row,) = epoch_records([metrics], flat, **effective)
        write_epoch(row, epoch_path(epochs, int(row["epoch"]), writer))

    if state is not None:
        stored = epoch_files(epochs)
        done = int(state["epoch"])
        withdraw([f for e, f in stored.items() if e > done], Location.of(out / WITHDRAWN_DIR))
        for metrics in state["history"]:
            if int(metrics["epoch"]) not in stored:
                write_row(metrics)
    cpu = CpuClock()

    def report(metrics: Metrics, thunk: StateThunk) -> None:
        cpu.measure(metrics)
        save_state(thunk(), checkpoint)
        write_row(metrics)
        if on_epoch is not None:
            on_epoch(metrics)

    return fit(config, data, report=report, resume=state, progress=progress, schedule=schedule)
