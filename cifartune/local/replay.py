"""A trial's hyperparameter schedule, read back from a study's results directory, for
``cifartune train --replay``: population-based training finds a schedule, not a configuration;
this trains one model with it, from scratch, without Ray.

A PBT trial's model was trained by a chain of trials: the trial whose state it took at its last
exploit trained the epochs up to it, and so on back to the first (``lineage/``, see
:mod:`cifartune.store.lineage`). The epoch rows of that chain hold the values in force at each
epoch (``config/*``); the replay starts from the first trial's config and seed and sets the
values that PBT changed before the epoch they changed at. Any other study's trial replays as the
configuration it ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cifartune.config.resolved import ResolvedSpec, resolve
from cifartune.config.spec import SEED_KEY, VARIANT_KEY
from cifartune.config.trial import TrialConfig
from cifartune.errors import ConfigError
from cifartune.store.columns import CONFIG_PREFIX
from cifartune.store.directory import StudyDirectory
from cifartune.store.lineage import final_values, lineage_schedule
from cifartune.store.study_data import StudyData, read_study


@dataclass(frozen=True)
class Replay:
    """What ``train --replay`` trains: `config` from epoch 1, `schedule[e]` from epoch e on."""

    trial_id: str
    config: TrialConfig
    schedule: dict[int, TrialConfig]
    trained_by: list[tuple[int, str]]  # (epoch, the study's trial that trained it)


def _plain(value: Any) -> Any:
    """A Parquet cell as the config takes it: a Python scalar, a missing value as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _sample(resolved: ResolvedSpec, row: pd.Series) -> dict[str, Any]:
    """The sample (the keys Ray set) behind an epoch row: the searched and mutated keys, the
    seed and variant; everything else comes from the spec as it did in the study."""
    spec = resolved.spec
    keys = [*spec.space, *spec.scheduler.mutations, SEED_KEY]
    sample = {key: _plain(row[CONFIG_PREFIX + key]) for key in keys if CONFIG_PREFIX + key in row}
    if spec.variants and isinstance(row.get(VARIANT_KEY), str):
        sample[VARIANT_KEY] = row[VARIANT_KEY]
    return {key: value for key, value in sample.items() if value is not None}


def best_trial(study: StudyData) -> str:
    """The trial to replay by default: the best final model of a PBT study (see
    :func:`final_values`), else the trial with the best epoch."""
    if study.pbt:
        ranked = list(final_values(study.epochs, study.metric, study.mode).index)
    else:
        scored = study.trials.dropna(subset=["best_metric"])
        ranked = list(scored.sort_values("best_metric", ascending=study.mode == "min").trial_id)
    if not ranked:
        raise ConfigError("--replay: no trial of the study has finished an epoch yet")
    return str(ranked[0])


def plan_replay(where: str, trial_id: str | None = None) -> Replay:
    """The replay of `trial_id` (default: the study's best trial) of the study in `where`,
    which may also name the trial itself: RESULTS/TRIAL."""
    stored, named = StudyDirectory.naming_trial(where)
    if named is not None:
        if trial_id not in (None, named):
            raise ConfigError(f"--trial {trial_id}: --replay {where} already names a trial")
        trial_id = named
    directory = stored.location
    study = read_study(directory)
    resolved = resolve(stored.spec())
    trial_id = trial_id or best_trial(study)
    epochs = study.epochs
    if trial_id not in set(epochs["trial_id"]):
        known = ", ".join(sorted(set(epochs["trial_id"]))[:8])
        raise ConfigError(f"--trial {trial_id}: no epoch of it in {directory}; trials: {known}")
    trained_by = lineage_schedule(epochs, study.lineage, trial_id)
    rows = epochs.set_index(["trial_id", "epoch"])
    configs = {
        epoch: resolved.trial_config(_sample(resolved, rows.loc[(trainer, epoch)]))
        for epoch, trainer in trained_by
    }
    first = configs[1].model_copy(update={"epochs": len(trained_by)})
    schedule: dict[int, TrialConfig] = {}
    for epoch in range(2, len(trained_by) + 1):
        if configs[epoch] != configs[epoch - 1]:
            schedule[epoch] = configs[epoch]
    return Replay(trial_id, first, schedule, trained_by)
