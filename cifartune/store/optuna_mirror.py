"""A study mirrored into an Optuna storage, so Optuna's tools (optuna-dashboard,
``optuna.load_study``, ``optuna.visualization``, importance evaluators) work on every study,
whatever its search algorithm.

The results directory stays the source of truth: the mirror is made to agree with the Parquet
files, one cifartune trial at a time (:meth:`OptunaMirror.update`), and can be rebuilt from them
whole (:func:`export_optuna`). Every write is conditional on the storage disagreeing, so updating
twice, or after a resumed trial re-reports an epoch, writes nothing.

Mapping, one Optuna trial per cifartune trial (found by its ``trial_id`` user attribute, which is
Ray's trial id):

- params: the spec's space (lists and variants as categoricals); the seed is a user attribute;
  a population-based training member's mutated keys are params too, with the values it
  started with (what the search drew; its epoch rows hold the values in force at each epoch),
  its ``at_best_epoch`` user attribute the values in force at its best epoch ('optim.lr=0.0158
  model.dropout=0.1'), and its exploits its ``exploits`` user attribute ('2 from trial a');
- intermediate values: the study metric of each epoch, step = epoch (non-finite values, a
  diverged loss, are left out: Optuna's pruners and plots take finite values only);
- state: PENDING -> WAITING; RUNNING and INTERRUPTED -> RUNNING (an interrupted trial is resumed
  later, and a finished Optuna trial cannot change); completed -> COMPLETE with the best epoch's
  metric (``best_metric``, the epoch cifartune selects and scores on the test set);
  early-stopped (ASHA) -> PRUNED with the last epoch's metric (what ``Study.tell`` records for a
  pruned trial); error and diverged -> FAIL, which Optuna keeps without a value (the metric before
  divergence stays in the intermediate values and the ``best_metric`` user attribute).

Writes go through the storage's public :class:`optuna.storages.BaseStorage` methods rather than
``Study.tell``, so the mirror sets states and values exactly as above without Optuna's per-trial
log lines or sampler hooks.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from cifartune.config.spec import VARIANT_KEY, metric_mode
from cifartune.errors import CifartuneError
from cifartune.storage import Location
from cifartune.store.columns import CONFIG_PREFIX, START_PREFIX, column_value
from cifartune.store.lineage import trial_exploits
from cifartune.store.study_data import read_study
from cifartune.store.summary import epochs_by_trial, metric_value
from cifartune.store.trial_states import FINAL_STATES

log = logging.getLogger(__name__)
JOURNAL_FILE = "optuna.journal"
TRIAL_ID_ATTR = "trial_id"
EXPLOITS_ATTR = "exploits"  # a PBT member's lineage (see OptunaMirror._exploits)
AT_BEST_ATTR = "at_best_epoch"  # a PBT member's values in force at its best epoch
# What a PBT study's params mean, said in the study itself (a study user attribute).
PARAMS_ATTR = "params"
PBT_PARAMS = (
    "population-based training: a trial's params are the values it started with; the values in "
    f"force at its best epoch are its {AT_BEST_ATTR!r} attribute, its exploits its "
    f"{EXPLOITS_ATTR!r} attribute"
)
# Trial-row columns copied to user attributes where present (the rest are params).
USER_ATTR_COLUMNS = (
    "trial_id", "ray_trial_id", "group", "variant", "seed", "state", "stop_reason", "epochs_run",
    "max_epochs", "best_epoch", "best_metric", "retries", "time_s", "error",
)  # fmt: skip
COUNT_COLUMNS = ("seed", "epochs_run", "max_epochs", "best_epoch", "retries")
FINAL_TRIAL_STATES = {
    "completed": TrialState.COMPLETE,
    "early-stopped": TrialState.PRUNED,
    "budget": TrialState.PRUNED,  # stopped by the study's budget: before its end, as ASHA's
    "error": TrialState.FAIL,
    "diverged": TrialState.FAIL,
}


class MirrorError(CifartuneError, ValueError):
    """The Optuna storage cannot agree with the study (another study there, a value outside its
    distribution); the message names what and how to fix it."""


def open_storage(directory: Path, storage_url: str | None = None) -> BaseStorage:
    """The storage a study is mirrored into: by default Optuna's journal file
    ``<directory>/optuna.journal`` (safe for one writer and any number of readers, on a local or
    shared filesystem); a URL (``sqlite:///x.db``, ``postgresql://...``) opens an RDB storage;
    any other string is a journal file path."""
    if storage_url is not None and "://" in storage_url:
        return RDBStorage(storage_url)
    path = Path(storage_url) if storage_url else directory / JOURNAL_FILE
    return JournalStorage(JournalFileBackend(str(path)))


def storage_location(directory: Path, storage_url: str | None = None) -> str:
    """The URL, or the journal file's path, that :func:`open_storage` opens."""
    if storage_url is not None and "://" in storage_url:
        return storage_url
    return str(Path(storage_url) if storage_url else directory / JOURNAL_FILE)


def load_study_code(directory: Path, storage_url: str | None, study_name: str) -> str:
    """The Python lines that open the mirror with Optuna alone (for the user to copy)."""
    location = storage_location(directory, storage_url)
    if storage_url is not None and "://" in storage_url:
        return (
            "import optuna\n"
            f"study = optuna.load_study(study_name={study_name!r}, storage={location!r})"
        )
    return (
        "import optuna\n"
        "from optuna.storages import JournalStorage\n"
        "from optuna.storages.journal import JournalFileBackend\n"
        f"study = optuna.load_study(study_name={study_name!r}, "
        f"storage=JournalStorage(JournalFileBackend({location!r})))"
    )


def space_distributions(spec: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """Optuna distributions of a resolved spec's searched keys (spec.yaml as a dict): grid
    lists and variants as categoricals, the spec's float/int/categorical as their namesakes."""
    distributions: dict[str, BaseDistribution] = {}
    if spec.get("variants"):
        distributions[VARIANT_KEY] = CategoricalDistribution(list(spec["variants"]))
    # A PBT trial's mutated keys are params too: the values it started with (its trial row's).
    mutations = (spec.get("scheduler") or {}).get("mutations") or {}
    for key, dim in {**(spec.get("space") or {}), **mutations}.items():
        if isinstance(dim, list):
            distributions[key] = CategoricalDistribution([column_value(v) for v in dim])
        elif dim["type"] == "float":
            distributions[key] = FloatDistribution(dim["low"], dim["high"], log=dim["log"])
        elif dim["type"] == "int":
            distributions[key] = IntDistribution(dim["low"], dim["high"], log=dim["log"])
        else:
            distributions[key] = CategoricalDistribution([column_value(v) for v in dim["choices"]])
    return distributions


def _plain(value: Any) -> Any:
    """A JSON-safe Python value: numpy scalars unwrapped, NaN and missing as None."""
    if hasattr(value, "item"):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _attribute(key: str, value: Any) -> Any:
    """A user attribute's value; counts stay ints (a count column with a gap reads back from
    Parquet as floats, and epoch 3 must not be '3.0' in one trial and '1' in the next)."""
    plain = _plain(value)
    if key in COUNT_COLUMNS and isinstance(plain, float) and plain.is_integer():
        return int(plain)
    return plain


class OptunaMirror:
    """One study's Optuna mirror. Which Optuna trial mirrors which cifartune trial is read back
    from the storage (the ``trial_id`` user attribute), so a new mirror on an existing storage,
    after a resume or in another process, carries on where the last one stopped."""

    def __init__(
        self, directory: Path, spec: Mapping[str, Any], storage_url: str | None = None
    ) -> None:
        self.metric = str(spec.get("metric", "val/top1"))
        mode = metric_mode(self.metric, spec.get("mode"))
        self.distributions = space_distributions(spec)
        self.directory = directory
        self.pbt = (spec.get("scheduler") or {}).get("name") == "pbt"
        self.mutated = list((spec.get("scheduler") or {}).get("mutations") or {})
        self.storage = open_storage(directory, storage_url)
        direction = StudyDirection.MAXIMIZE if mode == "max" else StudyDirection.MINIMIZE
        name = str(spec["name"])
        # create_study(load_if_exists=True) would log a failed creation in the journal each time
        if name in {s.study_name for s in self.storage.get_all_studies()}:
            self.study = optuna.load_study(study_name=name, storage=self.storage)
        else:
            self.study = optuna.create_study(
                storage=self.storage, study_name=name, direction=direction
            )
        if self.study.direction != direction:
            raise MirrorError(
                f"Optuna storage {storage_location(directory, storage_url)} holds a study "
                f"{spec['name']!r} with direction {self.study.direction.name.lower()}, but "
                f"{self.metric} is to {direction.name.lower()} here; use another --storage"
            )
        if self.pbt and self.study.user_attrs.get(PARAMS_ATTR) != PBT_PARAMS:
            self.study.set_user_attr(PARAMS_ATTR, PBT_PARAMS)
        if self.study.metric_names != [self.metric]:  # optuna-dashboard's "Objective 0"
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([self.metric])
        self._study_id = self.storage.get_study_id_from_name(self.study.study_name)
        self._ids: dict[str, int] = {}
        self._warned: set[str] = set()
        self._read_mapping()

    def _read_mapping(self) -> None:
        for trial in self.study.get_trials(deepcopy=False):
            trial_id = trial.user_attrs.get(TRIAL_ID_ATTR)
            if trial_id is not None and trial_id not in self._ids:
                self._ids[trial_id] = self.storage.get_trial_id_from_study_id_trial_number(
                    self._study_id, trial.number
                )

    def update(self, trial_row: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]]) -> None:
        """Make the storage agree with one cifartune trial: `trial_row` is its trial
        row, `epochs` its epoch rows as dicts (any order). Writes only what differs."""
        trial_id = str(trial_row["trial_id"])
        state = self._target_state(trial_row)
        steps = self._steps(epochs)
        attrs = {k: _attribute(k, trial_row[k]) for k in USER_ATTR_COLUMNS if k in trial_row}
        if self.pbt and state.is_finished():
            attrs[EXPLOITS_ATTR] = self._exploits(trial_id)
            attrs[AT_BEST_ATTR] = self._at_best(trial_row, epochs)
        if trial_id not in self._ids:
            self._read_mapping()  # another process may have created it since
        if trial_id not in self._ids:
            self._create(trial_id, state, steps, attrs, trial_row)
            return
        internal = self._ids[trial_id]
        current = self.storage.get_trial(internal)
        if current.state.is_finished():
            self._check_unchanged(current, state, steps)
            return
        if current.state == TrialState.WAITING and state != TrialState.WAITING:
            self.storage.set_trial_state_values(internal, TrialState.RUNNING)
        for step, metric in steps.items():
            if current.intermediate_values.get(step) != metric:
                self.storage.set_trial_intermediate_value(internal, step, metric)
        # The attributes (epochs run, time, best so far) follow each epoch in the intermediate
        # values already; rewritten when the trial changes state, they cost the journal a few
        # synced writes per trial, not a few per epoch.
        if state != current.state or state.is_finished():
            for key, attr in attrs.items():
                if key not in current.user_attrs or current.user_attrs[key] != attr:
                    self.storage.set_trial_user_attr(internal, key, attr)
        if state.is_finished():
            state, value = self._final_value(state, trial_row, steps)
            self.storage.set_trial_state_values(internal, state, None if value is None else [value])

    def _exploits(self, trial_id: str) -> str:
        """A PBT member's lineage as Optuna shows it: '2 from trial a, 4 from trial b'."""
        taken = trial_exploits(Location.of(self.directory), trial_id)
        return (
            ", ".join(f"{row['epoch']} from trial {row['donor_trial_id']}" for row in taken) or "-"
        )

    def _at_best(self, row: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]]) -> str:
        """A PBT member's values in force at its best epoch: 'optim.lr=0.0158 model.dropout=0.1'
        (its params are the ones it started with)."""
        best = [e for e in epochs if e.get("epoch") == _plain(row.get("best_epoch"))]
        if not best:
            return "-"
        return " ".join(f"{k}={_plain(best[0].get(CONFIG_PREFIX + k))}" for k in self.mutated)

    def sync(self, trials: pd.DataFrame, epochs: pd.DataFrame) -> None:
        """:meth:`update` for every row of `trials` (ordered by trial id, so a rebuilt mirror
        numbers its trials the same way every time) with its rows of `epochs`."""
        by_trial = epochs_by_trial(epochs)
        for row in trials.sort_values("trial_id").to_dict("records"):
            self.update(row, by_trial.get(row["trial_id"], []))

    def _target_state(self, row: Mapping[str, Any]) -> TrialState:
        if row["state"] == "PENDING":
            return TrialState.WAITING
        if row["state"] in FINAL_STATES:
            reason = str(row["stop_reason"])
            if reason not in FINAL_TRIAL_STATES:
                raise MirrorError(
                    f"trial {row['trial_id']}: stop_reason = {reason!r} with state "
                    f"{row['state']}; the mirror knows {', '.join(FINAL_TRIAL_STATES)}"
                )
            return FINAL_TRIAL_STATES[reason]
        return TrialState.RUNNING  # RUNNING, INTERRUPTED (resumed later), PAUSED

    def _steps(self, epochs: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        steps = {int(row["epoch"]): metric_value(row.get(self.metric)) for row in epochs}
        return {e: v for e, v in sorted(steps.items()) if math.isfinite(v)}

    def _final_value(
        self, state: TrialState, row: Mapping[str, Any], steps: Mapping[int, float]
    ) -> tuple[TrialState, float | None]:
        if state == TrialState.PRUNED:  # as the searcher tells Optuna: no value at all, a fail
            return (state, steps[max(steps)]) if steps else (TrialState.FAIL, None)
        if state == TrialState.COMPLETE:
            best = _plain(row.get("best_metric"))
            if best is None or not math.isfinite(best):  # Optuna refuses a NaN objective value
                return TrialState.FAIL, None
            return state, float(best)
        return state, None

    def _params(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The searched values of a trial row: for a PBT member, those it started with (a row
        read back by study_data holds them as ``start/*``, and the values in force as
        ``config/*``)."""
        return {
            key: _plain(row.get(START_PREFIX + key, row.get(CONFIG_PREFIX + key)))
            if key != VARIANT_KEY
            else _plain(row.get(key))
            for key in self.distributions
        }

    def _create(
        self,
        trial_id: str,
        state: TrialState,
        steps: dict[int, float],
        attrs: dict[str, Any],
        row: Mapping[str, Any],
    ) -> None:
        value = None
        if state.is_finished():
            state, value = self._final_value(state, row, steps)
        params = self._params(row)
        try:  # validates every param against its distribution
            template = optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=self.distributions,
                user_attrs={TRIAL_ID_ATTR: trial_id, **attrs},
                intermediate_values=steps,
            )
        except (ValueError, TypeError) as exc:
            raise MirrorError(
                f"trial {trial_id}: params {params} do not fit the spec's space ({exc}); the "
                "results directory and its spec.yaml disagree"
            ) from None
        self._ids[trial_id] = self.storage.create_new_trial(self._study_id, template)

    def _check_unchanged(
        self, current: FrozenTrial, state: TrialState, steps: Mapping[int, float]
    ) -> None:
        """A finished Optuna trial cannot change; say so (once) if the study moved on, e.g. an
        errored trial that a resume ran again."""
        trial_id = str(current.user_attrs[TRIAL_ID_ATTR])
        if (current.state, current.intermediate_values) == (state, dict(steps)):
            return
        if trial_id in self._warned:
            return
        self._warned.add(trial_id)
        log.warning(
            "Optuna trial %d (cifartune trial %s) finished as %s but the study now has it %s with "
            "%d epochs; finished Optuna trials cannot change: rebuild the mirror with "
            "`cifartune export-optuna --storage NEW` once the study ends",
            current.number,
            trial_id,
            current.state.name,
            state.name,
            len(steps),
        )


def export_optuna(directory: Path, storage_url: str | None = None) -> OptunaMirror:
    """Bring the Optuna mirror of the study in `directory` up to date from its Parquet files
    (all of it for an old study or a missing journal; nothing when it already agrees)."""
    study = read_study(directory)
    if study.trials.empty:
        log.warning("%s: no trial has reported yet; the Optuna study is empty", directory)
    mirror = OptunaMirror(directory, {"name": study.name, **study.spec}, storage_url)
    mirror.sync(study.trials, study.epochs)
    return mirror


__all__ = [
    "JOURNAL_FILE",
    "MirrorError",
    "OptunaMirror",
    "export_optuna",
    "load_study_code",
    "open_storage",
    "space_distributions",
    "storage_location",
]
