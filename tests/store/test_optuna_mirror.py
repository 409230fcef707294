"""The Optuna mirror of a study: rebuilt from Parquet, updated trial by trial, idempotent."""

import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from cifartune.storage import Location
from cifartune.store.optuna_mirror import JOURNAL_FILE, MirrorError, OptunaMirror, export_optuna
from cifartune.store.study_data import read_study
from cifartune.store.trial_states import read_trial_rows, write_trial_row

from ..support import fabricate_study, run_cli

ASHA_SPEC = {
    "name": "search",
    "base": {"epochs": 4},
    "space": {
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1, "log": True},
        "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
        "optim.name": ["sgd", "adam"],
    },
    "search": {"algorithm": "optuna", "samples": 8},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
}
GRID_SPEC = {
    "name": "grid",
    "base": {"epochs": 3},
    "space": {"optim.lr": [0.1, 0.01]},
    "variants": {"plain": {}, "std": {"data.normalize": "standardize"}},
    "repeats": 2,
}


def asha_study(tmp_path):
    def sample(i):
        return {"optim.lr": 10 ** -(1 + i / 3), "batch_size": 16 * (i + 1), "optim.name": "adam"}

    curves = {
        "t_00000": (sample(0), [30.0, 40.0, 45.0, 44.0], "TERMINATED", False),  # completed
        "t_00001": (sample(1), [20.0], "TERMINATED", False),  # early-stopped
        "t_00002": (sample(2), [35.0, 50.0, 52.0, 53.0], "TERMINATED", False),  # completed, best
        "t_00003": (sample(3), [30.0, 25.0], "TERMINATED", False),  # early-stopped
        "t_00004": (sample(4), [60.0, 10.0], "TERMINATED", True),  # diverged
        "t_00005": (sample(5), [33.0], "ERROR", False),
        "t_00006": (sample(6), [31.0, 32.0], "RUNNING", False),
    }
    results = fabricate_study(tmp_path, ASHA_SPEC, curves, state="running")
    # A trial Ray has queued but not started: a row without epochs.
    (last,) = read_trial_rows(Location.of(results)).iloc[-1:].to_dict("records")
    pending = {
        **last, "trial_id": "t_00007", "state": "PENDING", "stop_reason": "pending",
        "epochs_run": 0, "best_epoch": None, "best_metric": None, "config/batch_size": 128,
    }  # fmt: skip
    write_trial_row(Location.of(results), pending, 1)
    return results


def grid_study(tmp_path):
    curves = {}
    for i, (variant, lr, seed) in enumerate(
        (v, lr, s) for v in ("plain", "std") for lr in (0.1, 0.01) for s in (0, 1)
    ):
        top = 40.0 + 10 * (variant == "std") + 100 * lr + seed
        sample = {"variant": variant, "optim.lr": lr, "seed": seed}
        curves[f"g_{i:05d}"] = (sample, [top - 2, top - 1, top], "TERMINATED", False)
    return fabricate_study(tmp_path, GRID_SPEC, curves)


def load(results, name):
    storage = JournalStorage(JournalFileBackend(str(results / JOURNAL_FILE)))
    return optuna.load_study(study_name=name, storage=storage)


def by_trial_id(study):
    return {t.user_attrs["trial_id"]: t for t in study.get_trials()}


def test_rebuild_from_parquet_mirrors_every_trial(tmp_path):
    results = asha_study(tmp_path)
    export_optuna(results)
    data = read_study(results)
    study = load(results, "search")
    mirrored = by_trial_id(study)
    assert sorted(mirrored) == sorted(data.trials["trial_id"]) and len(study.trials) == 8
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.metric_names == ["val/top1"]  # what optuna-dashboard calls the objective
    for row in data.trials.to_dict("records"):
        trial = mirrored[row["trial_id"]]
        epochs = data.epochs[data.epochs["trial_id"] == row["trial_id"]]
        assert trial.params == {
            "optim.lr": row["config/optim.lr"],
            "batch_size": row["config/batch_size"],
            "optim.name": "adam",
        }
        assert trial.intermediate_values == dict(
            zip(epochs["epoch"], epochs["val/top1"], strict=True)
        )
        assert trial.user_attrs["seed"] == 0
        assert trial.user_attrs["stop_reason"] == row["stop_reason"]
    states = {t: mirrored[t].state for t in mirrored}
    assert states == {
        "t_00000": TrialState.COMPLETE,
        "t_00001": TrialState.PRUNED,
        "t_00002": TrialState.COMPLETE,
        "t_00003": TrialState.PRUNED,
        "t_00004": TrialState.FAIL,
        "t_00005": TrialState.FAIL,
        "t_00006": TrialState.RUNNING,
        "t_00007": TrialState.WAITING,
    }
    completed = data.trials[data.trials["stop_reason"] == "completed"]
    assert study.best_value == completed["best_metric"].max() == 53.0
    assert mirrored["t_00000"].value == 45.0  # the best epoch, not the last
    assert mirrored["t_00003"].value == 25.0  # pruned: the last epoch, as Study.tell records
    assert mirrored["t_00004"].value is None and mirrored["t_00004"].user_attrs["best_metric"] == 60
    assert isinstance(mirrored["t_00000"].distributions["optim.lr"], FloatDistribution)
    assert mirrored["t_00000"].distributions["optim.lr"].log


def test_grid_axes_and_variants_are_categoricals_and_the_seed_a_user_attr(tmp_path):
    results = grid_study(tmp_path)
    export_optuna(results)
    study = load(results, "grid")
    assert len(study.trials) == 8
    trial = by_trial_id(study)["g_00007"]  # std, lr 0.01, seed 1
    assert trial.params == {"variant": "std", "optim.lr": 0.01}
    assert trial.distributions == {
        "variant": CategoricalDistribution(["plain", "std"]),
        "optim.lr": CategoricalDistribution([0.1, 0.01]),
    }
    assert trial.user_attrs["seed"] == 1 and trial.state == TrialState.COMPLETE
    assert study.best_value == read_study(results).trials["best_metric"].max()


def test_updates_are_idempotent(tmp_path):
    results = asha_study(tmp_path)
    export_optuna(results)
    journal = results / JOURNAL_FILE
    before = journal.read_bytes()
    export_optuna(results)  # a second rebuild, with a fresh mapping read from the storage
    assert journal.read_bytes() == before
    data = read_study(results)
    mirror = OptunaMirror(results, {"name": "search", **data.spec})
    row = data.trials.set_index("trial_id").loc["t_00006"].to_dict() | {"trial_id": "t_00006"}
    epochs = data.epochs[data.epochs["trial_id"] == "t_00006"]
    # a resumed trial re-reports epoch 2 (as the recorder may see it before replacing the row)
    mirror.update(row, pd.concat([epochs, epochs.tail(1)]).to_dict("records"))
    mirror.update(row, epochs.to_dict("records"))
    assert journal.read_bytes() == before


def test_a_trial_is_mirrored_epoch_by_epoch_until_it_finishes(tmp_path):
    results = asha_study(tmp_path)
    data = read_study(results)
    row = data.trials.set_index("trial_id").loc["t_00002"].to_dict() | {"trial_id": "t_00002"}
    epochs = data.epochs[data.epochs["trial_id"] == "t_00002"]
    spec = {"name": "search", **data.spec}
    for done in range(1, 5):
        state = "TERMINATED" if done == 4 else "RUNNING"
        # each epoch a new mirror: what it knows comes from the storage, not from memory
        OptunaMirror(results, spec).update(
            {**row, "state": state, "stop_reason": "completed" if done == 4 else "running"},
            epochs.head(done).to_dict("records"),
        )
        (trial,) = load(results, "search").trials
        assert trial.intermediate_values == {
            e: [35.0, 50.0, 52.0, 53.0][e - 1] for e in range(1, done + 1)
        }
        assert trial.state == (TrialState.COMPLETE if done == 4 else TrialState.RUNNING)
    assert trial.value == 53.0


def test_interrupted_trials_stay_running_and_pending_ones_start_when_they_run(tmp_path):
    results = asha_study(tmp_path)
    data = read_study(results)
    export_optuna(results)
    rows = data.trials.set_index("trial_id")
    mirror = OptunaMirror(results, {"name": "search", **data.spec})
    mirror.update(
        rows.loc["t_00006"].to_dict() | {"trial_id": "t_00006", "state": "INTERRUPTED"},
        data.epochs[data.epochs["trial_id"] == "t_00006"].to_dict("records"),
    )
    pending = rows.loc["t_00007"].to_dict() | {"trial_id": "t_00007", "state": "RUNNING"}
    mirror.update(pending, [])
    mirrored = by_trial_id(load(results, "search"))
    assert mirrored["t_00006"].state == TrialState.RUNNING
    assert mirrored["t_00007"].state == TrialState.RUNNING


def test_any_optuna_storage_url(tmp_path):
    results = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'mirror.db'}"
    export_optuna(results, url)
    assert len(optuna.load_study(study_name="grid", storage=url).trials) == 8
    assert not (results / JOURNAL_FILE).exists()


def test_a_study_of_the_other_direction_is_refused(tmp_path):
    results = grid_study(tmp_path)
    optuna.create_study(
        study_name="grid",
        storage=JournalStorage(JournalFileBackend(str(results / JOURNAL_FILE))),
        direction="minimize",
    )
    with pytest.raises(MirrorError, match=r"direction minimize.*maximize.*another --storage"):
        export_optuna(results)


def test_a_value_outside_the_space_names_the_trial(tmp_path):
    results = grid_study(tmp_path)
    data = read_study(results)
    row = data.trials.iloc[0].to_dict() | {"config/optim.lr": 0.5}
    with pytest.raises(MirrorError, match=r"trial g_00000: .*optim.lr.*0.5"):
        OptunaMirror(results, {"name": "grid", **data.spec}).update(row, [])


def test_an_unknown_stop_reason_is_an_error_not_a_guess(tmp_path):
    results = grid_study(tmp_path)
    data = read_study(results)
    row = data.trials.iloc[0].to_dict() | {"stop_reason": "paused"}
    with pytest.raises(MirrorError, match=r"trial g_00000: stop_reason = 'paused'"):
        OptunaMirror(results, {"name": "grid", **data.spec}).update(row, [])


def test_export_optuna_command_prints_how_to_open_it(tmp_path):
    results = grid_study(tmp_path)
    out = run_cli(["export-optuna", str(results)])
    assert out.returncode == 0, out.stderr
    assert "optuna.load_study(study_name='grid'" in out.stdout
    assert str(results / JOURNAL_FILE) in out.stdout
    assert len(load(results, "grid").trials) == 8
    assert not math.isnan(load(results, "grid").best_value)


# --- Acceptance on a real local Ray runtime: the mirror the study itself writes as it runs ---


def assert_mirror_agrees(results):
    """The journal a study wrote holds one Optuna trial per trial row, with the same
    params, the metric of every Parquet epoch as intermediate values, its final state, and the
    best value of the completed trials."""
    data = read_study(results)
    study = load(results, data.name)
    mirrored = by_trial_id(study)
    assert len(study.trials) == len(mirrored) == len(data.trials)
    assert sorted(mirrored) == sorted(data.trials["trial_id"])
    keys = list(data.spec["space"])
    want_state = {"completed": TrialState.COMPLETE, "early-stopped": TrialState.PRUNED}
    for row in data.trials.to_dict("records"):
        trial = mirrored[row["trial_id"]]
        assert trial.params == {k: row["config/" + k] for k in keys}
        epochs = data.epochs[data.epochs["trial_id"] == row["trial_id"]]
        assert trial.intermediate_values == dict(
            zip(epochs["epoch"], epochs[data.metric], strict=True)
        )
        assert trial.state == want_state.get(row["stop_reason"], TrialState.FAIL)
        assert trial.user_attrs["stop_reason"] == row["stop_reason"]
    completed = data.trials[data.trials["stop_reason"] == "completed"]
    assert study.best_value == completed["best_metric"].max()
    return study


@pytest.mark.slow
def test_a_grid_study_mirrors_itself_as_it_runs(grid_study):
    study = assert_mirror_agrees(grid_study)
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert study.trials[0].distributions["optim.lr"] == CategoricalDistribution([0.05, 0.01])


@pytest.mark.slow
def test_an_optuna_asha_study_mirrors_its_pruned_trials(asha_study):
    study = assert_mirror_agrees(asha_study)
    assert TrialState.PRUNED in {t.state for t in study.trials}


def mirror_content(results):
    """What a resumed study's mirror must share with an uninterrupted one's (ids aside)."""
    study = assert_mirror_agrees(results)
    return sorted(
        (t.params["optim.lr"], t.state, t.value, t.intermediate_values) for t in study.trials
    )
