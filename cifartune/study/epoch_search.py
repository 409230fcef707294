"""Ray Tune's ``OptunaSearch``, told what cifartune selects: per-epoch values, the best epoch.

Ray's :class:`~ray.tune.search.optuna.OptunaSearch` reports intermediate values at Ray's
``training_iteration`` (which restarts at 1 when a trial resumes from cifartune's checkpoint, so
Optuna drops the repeated steps and the later epochs are lost) and tells Optuna every trial that
ended without an error COMPLETE with its *last* value (an ASHA-stopped trial's truncated value
ranks beside finished trials; a finished trial is not scored by the epoch cifartune selects).
:class:`EpochOptunaSearch` reports at ``result["epoch"]`` and ends trials by one rule,
:func:`optuna_state_of`, which cifartune's Optuna mirror can share:

- values: the metric per epoch (step = epoch, 1-based, continuing across resumes), finite only
  (a diverged epoch's value is made worst by cifartune; Optuna's samplers take finite values);
- error, diverged, or no finite value -> FAIL, without a value;
- ran to its end (last epoch >= ``max_epochs``) -> COMPLETE with the best epoch's value (max
  for ``mode="max"``, min for ``"min"``), the epoch cifartune selects and scores;
- stopped before its end (ASHA, a budget) -> PRUNED. ``Study.tell(state=PRUNED)`` records the
  value at the deepest intermediate step, so every finite per-epoch value is reported first; TPE
  ranks pruned trials after all complete ones, by the deepest step reached, then by that value.

Epochs the searcher never saw (a ``Tuner.restore`` from a searcher snapshot older than the
trials) come from ``history``, a picklable function giving the per-epoch values the study's
results directory holds for a Ray trial id; they are reported before the trial is told.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial, TrialState
from optuna.trial import Trial as OptunaTrial
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

History = Callable[[str], Mapping[int, float]]


def optuna_state_of(
    values: Mapping[int, float],
    *,
    last_epoch: int,
    max_epochs: int,
    diverged: bool,
    error: bool,
    mode: str,
) -> tuple[TrialState, float | None]:
    """The Optuna state of an ended trial and the value Optuna records for it (module docstring).

    ``values`` are the metric per epoch (non-finite ones are ignored); ``last_epoch`` the last
    epoch the trial reached. For PRUNED the value is the one at the deepest finite epoch, which
    is what ``Study.tell`` records when those values are its intermediate values.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    finite = {int(e): float(v) for e, v in values.items() if math.isfinite(v)}
    if error or diverged or not finite:
        return TrialState.FAIL, None
    if last_epoch >= max_epochs:
        pick = max if mode == "max" else min
        return TrialState.COMPLETE, pick(finite.values())
    return TrialState.PRUNED, finite[max(finite)]


class EpochOptunaSearch(OptunaSearch):
    """``OptunaSearch`` with intermediate values by epoch and trials ended by
    :func:`optuna_state_of`. Ray's constructor arguments, plus ``max_epochs`` (the epoch a trial
    that runs to its end reaches, unless the space samples ``epochs``) and ``history`` (see the
    module docstring).

    ``save``/``restore`` are Ray's: the whole ``__dict__`` (these two included) is pickled and a
    restore replaces it, so ``history`` must pickle (a module-level function or a
    ``functools.partial`` of one, not a lambda); that is checked here, not at Ray's first
    snapshot minutes into a study. Multi-objective searches are left to Ray's behaviour.
    """

    def __init__(
        self,
        *args: Any,
        max_epochs: int,
        history: History | None = None,
        **kwargs: Any,
    ) -> None:
        if int(max_epochs) < 1:
            raise ValueError(f"max_epochs must be at least 1, not {max_epochs}")
        if history is not None:
            try:
                pickle.dumps(history)
            except Exception as exc:  # pickle raises several types (PicklingError, TypeError...)
                raise TypeError(
                    f"history must be picklable (Ray pickles the searcher): {exc}"
                ) from exc
        super().__init__(*args, **kwargs)
        self._max_epochs = int(max_epochs)
        self._history = history

    @property
    def _study(self) -> Study:
        """Ray's study, which Ray's types say may be None (before ``set_search_properties``)."""
        study: Study | None = self._ot_study
        if study is None:
            raise RuntimeError("EpochOptunaSearch has no search space yet")
        return study

    def _running(self, trial_id: str) -> tuple[OptunaTrial, FrozenTrial] | None:
        """The Optuna trial of a Ray trial and its stored state (the source of truth for which
        steps are reported, also after a restore), or None, with a warning, where there is none
        or it has ended: Ray's KeyError or Optuna's refusal there would end the whole study."""
        ot_trial: OptunaTrial | None = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            for frozen in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if frozen.number == ot_trial.number:
                    return ot_trial, frozen
        log.warning("No running Optuna trial for Ray trial %s; its result is not told", trial_id)
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            super().on_trial_result(trial_id, result)  # Ray's: ignores or warns
            return
        value = _finite(result.get(self.metric))
        if value is None:
            return
        step = int(result["epoch"])
        trial = self._running(trial_id)
        if trial is not None and step not in trial[1].intermediate_values:
            trial[0].report(value, step)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)  # Ray's: tells or warns
            return
        trial = self._running(trial_id)
        if trial is None:
            self._completed_trials.add(trial_id)
            return
        ot_trial, frozen = trial
        reported = frozen.intermediate_values
        values = dict(reported)
        for epoch, past in self._past_values(trial_id).items():
            values.setdefault(epoch, past)
        result = result or {}
        last = _finite(result.get(self.metric))
        if "epoch" in result and last is not None:
            # Ray gives a result that stops a trial (ASHA, max_t) to on_trial_complete only
            values.setdefault(int(result["epoch"]), last)
        values = {e: v for e, v in values.items() if math.isfinite(v)}
        state, value = optuna_state_of(
            values,
            last_epoch=max([int(result.get("epoch", 0)), *values]),
            # A trial's own epochs where the space samples them.
            max_epochs=int(ot_trial.params.get("epochs", self._max_epochs)),
            diverged=bool(result.get("diverged")),
            error=error,
            mode=str(self._mode),
        )
        for epoch in sorted(values.keys() - reported.keys()):
            ot_trial.report(values[epoch], epoch)
        try:
            if state == TrialState.COMPLETE:
                self._study.tell(ot_trial, value, state=state)
            else:  # PRUNED takes its value from the intermediate values; FAIL has none
                self._study.tell(ot_trial, state=state)
        except Exception as exc:  # as Ray: a refused tell must not end the study
            log.warning("Optuna refused to end trial %s as %s: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)

    def _past_values(self, trial_id: str) -> dict[int, float]:
        """``history(trial_id)``, or nothing: an unreadable history leaves what the searcher saw
        (logged), rather than ending the study in a searcher callback."""
        if self._history is None:
            return {}
        try:
            return {int(e): float(v) for e, v in self._history(trial_id).items()}
        except Exception as exc:
            log.warning("No epoch history for trial %s: %s", trial_id, exc)
            return {}


def _finite(value: object) -> float | None:
    """``value`` as a float (NumPy scalars included), or None if it is none or not finite."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
