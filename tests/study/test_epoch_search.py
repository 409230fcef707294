"""EpochOptunaSearch: what Optuna is told, driven through Ray's searcher interface (no Ray
runtime), and a smoke run of the search-quality benchmark."""

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from ray import tune

from cifartune.study.epoch_search import EpochOptunaSearch, optuna_state_of

METRIC = "val/top1"


@pytest.fixture(autouse=True)
def _quiet_and_strict() -> Any:
    """Optuna's per-trial log lines off; its warnings (a step reported twice, a refused value)
    become errors, so a test fails if the searcher makes Optuna warn."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield
    optuna.logging.set_verbosity(verbosity)


def searcher(mode: str = "max", max_epochs: int = 6, **kwargs: Any) -> EpochOptunaSearch:
    s = EpochOptunaSearch(seed=0, max_epochs=max_epochs, **kwargs)
    s.set_search_properties(METRIC, mode, config={"x": tune.uniform(0, 1)})
    return s


def result(epoch: int, value: float, iteration: int | None = None, **extra: Any) -> dict:
    return {METRIC: value, "epoch": epoch, "training_iteration": iteration or epoch, **extra}


def feed(s: EpochOptunaSearch, trial_id: str, values: Mapping[int, float]) -> None:
    """Suggest `trial_id` and report `values` (epoch -> value), iteration = epoch."""
    s.suggest(trial_id)
    for epoch, value in values.items():
        s.on_trial_result(trial_id, result(epoch, value))


def only_trial(s: EpochOptunaSearch) -> FrozenTrial:
    (trial,) = s._study.trials
    return trial


def test_resumed_trial_reports_by_epoch_not_iteration() -> None:
    s = searcher()
    s.suggest("a")
    s.on_trial_result("a", result(1, 0.3, iteration=1))
    s.on_trial_result("a", result(2, 0.4, iteration=2))
    # Resumed from cifartune's checkpoint: Ray's iteration count starts again at 1.
    s.on_trial_result("a", result(2, 0.45, iteration=1))  # epoch 2 re-reported: ignored
    s.on_trial_result("a", result(3, 0.5, iteration=1))
    s.on_trial_result("a", result(4, 0.6, iteration=2))
    assert only_trial(s).intermediate_values == {1: 0.3, 2: 0.4, 3: 0.5, 4: 0.6}


def test_non_finite_values_are_not_reported() -> None:
    s = searcher()
    feed(s, "a", {1: 0.3, 2: -math.inf, 3: math.nan})
    assert only_trial(s).intermediate_values == {1: 0.3}


@pytest.mark.parametrize(("mode", "best"), [("max", 0.7), ("min", 0.2)])
def test_completed_trial_is_told_its_best_epoch(mode: str, best: float) -> None:
    s = searcher(mode=mode, max_epochs=4)
    feed(s, "a", {1: 0.5, 2: 0.7, 3: 0.2})
    # Ray hands the result that ends a trial (ASHA's max_t) to on_trial_complete only.
    s.on_trial_complete("a", result(4, 0.6))
    trial = only_trial(s)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == best  # not 0.6, the last epoch's
    assert trial.intermediate_values == {1: 0.5, 2: 0.7, 3: 0.2, 4: 0.6}


def test_asha_stopped_trial_is_pruned_with_its_epochs() -> None:
    s = searcher(max_epochs=9)
    feed(s, "a", {1: 0.3, 2: 0.5})
    s.on_trial_complete("a", result(3, 0.4))  # stopped at the epoch-3 rung
    trial = only_trial(s)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.4}
    assert trial.value == 0.4  # Optuna's rule for PRUNED: the deepest step's value


def test_diverged_and_errored_trials_fail() -> None:
    s = searcher()
    feed(s, "div", {1: 0.3, 2: 0.4})
    s.on_trial_complete("div", result(6, -math.inf, diverged=True))  # diverged at its last epoch
    feed(s, "err", {1: 0.3})
    s.on_trial_complete("err", None, error=True)
    feed(s, "none", {1: math.nan})
    s.on_trial_complete("none", result(2, -math.inf))  # no finite value at all
    trials = s._study.trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert [t.value for t in trials] == [None] * 3
    assert trials[0].intermediate_values == {1: 0.3, 2: 0.4}  # kept for the plots


def stored_history(trial_id: str) -> dict[int, float]:
    """What a results directory would hold (module level: the searcher must pickle it)."""
    return {1: 0.1, 2: 0.2, 3: 0.9, 4: 0.4, 5: math.nan}


def test_history_fills_epochs_the_searcher_missed() -> None:
    s = searcher(max_epochs=6, history=stored_history)
    s.suggest("a")
    s.on_trial_result("a", result(1, 0.15))  # seen: kept over the history's 0.1
    s.on_trial_result("a", result(6, 0.5, iteration=1))  # epochs 2-5 ran unseen
    s.on_trial_complete("a", result(6, 0.5, iteration=1))
    trial = only_trial(s)
    assert trial.intermediate_values == {1: 0.15, 2: 0.2, 3: 0.9, 4: 0.4, 6: 0.5}
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.9)


def test_history_fills_a_pruned_trial() -> None:
    s = searcher(max_epochs=9, history=stored_history)
    s.suggest("a")
    s.on_trial_complete("a", result(4, 0.4))  # a snapshot older than all its epochs
    trial = only_trial(s)
    assert trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.9, 4: 0.4}
    assert (trial.state, trial.value) == (TrialState.PRUNED, 0.4)


def broken_history(trial_id: str) -> dict[int, float]:
    raise OSError("results directory unreachable")


def test_unreadable_history_leaves_what_was_seen(caplog: pytest.LogCaptureFixture) -> None:
    s = searcher(max_epochs=3, history=broken_history)
    feed(s, "a", {1: 0.3, 2: 0.6})
    s.on_trial_complete("a", result(3, 0.5))
    assert (only_trial(s).state, only_trial(s).value) == (TrialState.COMPLETE, 0.6)
    assert "unreachable" in caplog.text


def test_history_must_pickle() -> None:
    with pytest.raises(TypeError, match="picklable"):
        EpochOptunaSearch(max_epochs=3, history=lambda trial_id: {})


def test_told_twice_changes_nothing() -> None:
    s = searcher(max_epochs=3)
    feed(s, "a", {1: 0.3, 2: 0.6})
    s.on_trial_complete("a", result(3, 0.5))
    s.on_trial_complete("a", result(3, 0.99))
    s.on_trial_complete("a", None, error=True)
    s.on_trial_result("a", result(4, 0.99))
    trial = only_trial(s)
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.6)
    assert trial.intermediate_values == {1: 0.3, 2: 0.6, 3: 0.5}


def test_unknown_trial_is_ignored() -> None:
    s = searcher()
    s.on_trial_result("ghost", result(1, 0.3))
    s.on_trial_complete("ghost", result(1, 0.3))
    assert s._study.trials == []


def test_save_and_restore_round_trip(tmp_path: Path) -> None:
    s = searcher(max_epochs=9, history=stored_history)
    feed(s, "done", {1: 0.3, 2: 0.5})
    s.on_trial_complete("done", result(3, 0.4))
    feed(s, "live", {1: 0.2, 2: 0.3})
    s.save(str(tmp_path / "searcher.pkl"))

    # As after Tuner.restore: a fresh instance, state from the snapshot (settings included).
    restored = EpochOptunaSearch(max_epochs=1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert (restored._max_epochs, restored._history) == (9, stored_history)
    restored.on_trial_complete("done", result(3, 0.99))  # already told: ignored
    restored.on_trial_result("live", result(2, 0.35, iteration=1))  # seen before the snapshot
    restored.on_trial_result("live", result(7, 0.6, iteration=2))
    restored.on_trial_complete("live", result(9, 0.7, iteration=4))  # history gives 3..4
    done, live = restored._study.trials
    assert (done.state, done.value) == (TrialState.PRUNED, 0.4)
    assert live.intermediate_values == {1: 0.2, 2: 0.3, 3: 0.9, 4: 0.4, 7: 0.6, 9: 0.7}
    assert (live.state, live.value) == (TrialState.COMPLETE, 0.9)
    assert restored.suggest("next") is not None  # the sampler goes on from the snapshot


RULE: dict[str, Any] = {
    "last_epoch": 4,
    "max_epochs": 4,
    "diverged": False,
    "error": False,
    "mode": "max",
}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"last_epoch": 4}, (TrialState.COMPLETE, 0.8)),
        ({"last_epoch": 4, "mode": "min"}, (TrialState.COMPLETE, 0.2)),
        ({"last_epoch": 5}, (TrialState.COMPLETE, 0.8)),
        ({"last_epoch": 3}, (TrialState.PRUNED, 0.5)),
        ({"last_epoch": 4, "diverged": True}, (TrialState.FAIL, None)),
        ({"last_epoch": 4, "error": True}, (TrialState.FAIL, None)),
    ],
)
def test_optuna_state_rule(kwargs: dict[str, Any], expected: tuple[TrialState, Any]) -> None:
    values = {1: 0.2, 2: 0.8, 3: 0.5, 4: -math.inf}
    assert optuna_state_of(values, **{**RULE, **kwargs}) == expected


def test_optuna_state_rule_without_finite_values() -> None:
    assert optuna_state_of({1: math.nan}, **RULE) == (TrialState.FAIL, None)
    with pytest.raises(ValueError, match="mode"):
        optuna_state_of({1: 0.5}, **{**RULE, "mode": "maximize"})
