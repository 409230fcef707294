"""The report's population-based training section on a made-up population: the best final
model's schedule follows its exploits, the exploits are listed with what they changed, and the
side-by-side comparison draws the best final model's own history, not its trial's rows."""

from dataclasses import replace
from pathlib import Path

import pandas as pd

from cifartune.storage import Location
from cifartune.store.study_data import StudyData
from cifartune.store.summary import in_force_at_best
from cifartune.views.reports.figures_curves import fig_compare
from cifartune.views.reports.naming import trial_labels
from cifartune.views.reports.population import population_section
from cifartune.views.reports.tables import studies_side_by_side

SPEC = {
    "name": "pop",
    "metric": "val/top1",
    "scheduler": {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                  "mutations": {"optim.lr": [0.1, 0.01, 0.001]}},
}  # fmt: skip
# b took a's state after epoch 2 and went on at lr 0.01; a never exploited.
LR = {"a": [0.1] * 4, "b": [0.001, 0.001, 0.01, 0.01]}
TOP1 = {"a": [20.0, 30.0, 31.0, 32.0], "b": [10.0, 12.0, 40.0, 50.0]}


def population():
    epochs = pd.DataFrame([
        {"trial_id": t, "group": t, "epoch": e + 1, "config/optim.lr": LR[t][e],
         "val/top1": TOP1[t][e]}
        for t in LR for e in range(4)
    ])  # fmt: skip
    trials = pd.DataFrame({
        "trial_id": ["a", "b"], "group": ["a", "b"], "config/optim.lr": [0.1, 0.001],
        "best_metric": [32.0, 50.0], "max_epochs": [4, 4], "epochs_run": [4, 4],
        "stop_reason": ["completed"] * 2, "state": ["TERMINATED"] * 2,
        **{key: [60.0, 60.0] for key in ("cpu_s", "reserved_cpu_s", "reserved_gpu_s")},
    })  # fmt: skip
    lineage = pd.DataFrame({
        "trial_id": ["b"], "epoch": [2], "donor_trial_id": ["a"], "donor_epoch": [2],
        "from/optim.lr": [0.001], "to/optim.lr": [0.01],
    })  # fmt: skip
    meta = {"name": "pop", "state": "completed"}
    return StudyData(Location.of(Path("pop")), meta, SPEC, epochs, trials, pd.DataFrame(), lineage)


def test_the_best_final_models_schedule_and_the_exploits_are_tabled():
    figures = []
    section = population_section(population(), lambda s, stem, plot: figures.append(stem))
    assert section is not None and section.title.startswith("Population-based training")
    schedule, exploits = (table.frame for table in section.tables)
    assert schedule[["epochs", "trained by", "learning rate"]].values.tolist() == [
        ["1–2", "a", "0.1"],
        ["3–4", "b", "0.01"],
    ]
    assert schedule["val/top1"].tolist() == ["20.0 → 30.0", "40.0 → 50.0"]
    assert exploits.values.tolist() == [[2, "b", "a", "learning rate 0.001 → 0.01"]]
    assert figures == ["pbt_schedules", "pbt_population"]


def test_a_study_that_is_not_pbt_has_no_population_section():
    study = population()
    plain = StudyData(study.directory, study.meta, {"name": "pop"}, study.epochs, study.trials,
                      study.test)  # fmt: skip
    assert population_section(plain, lambda *_: None) is None


def test_the_comparison_draws_the_best_final_model_along_its_lineage():
    study = population()
    other = StudyData(Location.of(Path("other")), {"name": "other"}, {"name": "other"},
                      study.epochs, study.trials, study.test)  # fmt: skip
    plot = fig_compare([study, other])
    assert plot is not None and "along its lineage" in plot.caption
    line = plot.figure.axes[0].get_lines()[0]
    assert list(line.get_ydata()) == [20.0, 30.0, 40.0, 50.0]  # a's epochs 1-2, then b's
    side = studies_side_by_side([study, other]).set_index("study")["best configuration"]
    assert side["pop"] == "the schedule of trial b (population-based training)"


def test_every_view_names_a_member_by_the_values_in_force_at_its_best_epoch():
    # b started at lr 0.001, but its best model (epoch 4) trained at 0.01, after taking a's
    # state: the trial table read back, and every label made from it, say 0.01.
    study = population()
    trials = study.trials.assign(best_epoch=[4, 4], seed=[0, 0])
    read = in_force_at_best(trials, study.epochs, ["config/optim.lr"]).set_index("trial_id")
    assert read.loc["b", "config/optim.lr"] == 0.01 and read.loc["b", "start/optim.lr"] == 0.001
    assert read.loc["a", "config/optim.lr"] == 0.1
    labels = trial_labels(replace(study, trials=read.reset_index()))
    assert labels.to_dict() == {"a": "learning rate 0.1", "b": "learning rate 0.01"}
