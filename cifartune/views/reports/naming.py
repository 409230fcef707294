"""Readable names for what the results store: config keys, values, trials, a study's fidelity."""

from __future__ import annotations

import pandas as pd

from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.study_data import StudyData

# Config keys as a reader says them (everything else: the key without its config/ prefix).
KEY_NAMES = {
    "optim.lr": "learning rate",
    "optim.name": "optimizer",
    "optim.weight_decay": "weight decay",
    "optim.momentum": "momentum",
    "batch_size": "batch size",
    "model.dropout": "dropout",
    "model.batchnorm": "batch norm",
    "data.augment": "augmentation",
    "data.normalize": "normalization",
    "schedule.name": "lr schedule",
    "epochs": "epochs",
}
# Keys whose values span decades: plotted on a log axis.
LOG_KEYS = ("optim.lr", "optim.weight_decay", "data.zca_epsilon")
STOP_NAMES = {
    "completed": "completed",
    "early-stopped": "stopped by ASHA",
    "diverged": "diverged",
    "error": "failed",
}


def metric_digits(metric: str, accuracy: int = 1) -> int:
    """Decimals that tell a metric's values apart: losses move in the third decimal (2.303 at
    chance, ~0.6 trained), accuracies in percent need `accuracy` decimals."""
    return 3 if metric.endswith("loss") else accuracy


def short(key: str) -> str:
    key = key.removeprefix(CONFIG_PREFIX)
    return KEY_NAMES.get(key, key)


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def config_label(row: pd.Series, study: StudyData) -> str:
    """A configuration's name: its variant and searched values (no seed)."""
    parts = [str(row["variant"])] if study.has_variants() and row.get("variant") else []
    parts += [f"{short(k)} {fmt(row[k])}" for k in study.factor_keys]
    return ", ".join(parts) or "the base configuration"


def trial_labels(study: StudyData) -> pd.Series:
    """A name per trial id: its configuration, then its seed when seeds vary."""
    trials = study.trials.set_index("trial_id", drop=False)
    seeds = trials["seed"].nunique() > 1

    def label(row: pd.Series) -> str:
        text = config_label(row, study)
        return f"{text} (seed {row['seed']})" if seeds else text

    return trials.apply(label, axis=1) if not trials.empty else pd.Series(dtype=str)


def fidelity(study: StudyData) -> str:
    """Training images, epochs and seeds per configuration, from the resolved spec."""
    base = study.spec.get("base", {}) or {}
    data = base.get("data", {}) or {}
    images = data.get("train_subset")
    images_text = f"{int(images):,} train images" if images else "all train images"
    planned = pd.to_numeric(study.trials["max_epochs"], errors="coerce").dropna()
    epochs = int(planned.max()) if len(planned) else base.get("epochs", "?")
    seeds = int(study.spec.get("repeats", 1) or 1)
    return f"{images_text}, {epochs} epochs, {seeds} seed{'s' if seeds > 1 else ''}"


def compute_seconds(trials: pd.DataFrame) -> tuple[pd.Series, str]:
    """Per trial, the compute to show and what it is: GPU seconds reserved when trials held a
    GPU, else CPU seconds measured (process CPU time) where every trial measured them, else CPU
    seconds reserved (its CPUs times its epochs' wall time). Results of older versions name the
    reserved seconds cpu_s and gpu_s."""
    if "reserved_cpu_s" not in trials:  # older trial tables: cpu_s, gpu_s were reserved
        gpu = pd.to_numeric(trials.get("gpu_s", pd.Series(dtype=float)), errors="coerce")
        if gpu.sum() > 0:
            return gpu, "GPU reserved"
        return pd.to_numeric(trials["cpu_s"], errors="coerce"), "CPU reserved"
    gpu = pd.to_numeric(trials["reserved_gpu_s"], errors="coerce")
    if gpu.sum() > 0:
        return gpu, "GPU reserved"
    used = pd.to_numeric(trials.get("cpu_s", pd.Series(dtype=float)), errors="coerce")
    if len(used) and used.notna().all():
        return used, "CPU used"
    return pd.to_numeric(trials["reserved_cpu_s"], errors="coerce"), "CPU reserved"
