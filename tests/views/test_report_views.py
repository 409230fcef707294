"""The report says what ran: the seed section only for studies that declare they reproduce the
practical work (judged on accuracy, learning rates within one optimizer), captions that describe
the panels drawn, and the states and tables as they are. Fabricated studies, no Ray."""

import json
import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml

from cifartune.config.base import flatten
from cifartune.config.spec import spec_hash, trial_config
from cifartune.config.validation import build_spec, load_spec
from cifartune.errors import ConfigError
from cifartune.store.study_data import read_study
from cifartune.study.recorder import StudyRecorder, TrialEvent
from cifartune.views.reports import build, build_report, figures_curves
from cifartune.views.reports.figures_cost import fig_timing
from cifartune.views.reports.figures_curves import fig_trial_curves
from cifartune.views.reports.figures_search import fig_factors, fig_lr_batch_heatmap
from cifartune.views.reports.plotting import data_axes

from ..store.test_optuna_mirror import asha_study
from ..support import REPO, fabricate_study
from .test_report import OPTUNA_SPEC, ablation_study, grid_study, table_after

# A user's own grid, selected by validation loss: it has the learning rates, batch sizes and
# optimizers the practical work's findings would look for, but it does not declare it.
LOSS_GRID = {
    "name": "custom",
    "base": {"epochs": 4},
    "space": {
        "optim.lr": [1.0, 0.1, 0.001],
        "batch_size": [32, 128],
        "optim.name": ["sgd", "adam"],
    },
    "metric": "val/loss",
    "repeats": 2,
}
BASE_TOP1 = {1.0: 10.0, 0.1: 50.0, 0.001: 10.0}


def loss_grid(tmp_path, **fields):
    """Top-1 = base(lr) + 5 at batch 128 + 20 with Adam + seed; losses are ~2 everywhere, so a
    loss read as an accuracy, or Adam pooled with SGD, shows in the numbers."""
    curves = {}
    for i, (lr, bs, opt, seed) in enumerate(
        (lr, bs, opt, s)
        for lr in (1.0, 0.1, 0.001)
        for bs in (32, 128)
        for opt in ("sgd", "adam")
        for s in (0, 1)
    ):
        top = BASE_TOP1[lr] + (5 if bs == 128 else 0) + (20 if opt == "adam" else 0) + seed
        sample = {"optim.lr": lr, "batch_size": bs, "optim.name": opt, "seed": seed}
        curves[f"c_{i:05d}"] = (sample, [top - 6, top - 3, top - 1, top], "TERMINATED", False)
    return fabricate_study(tmp_path, {**LOSS_GRID, **fields}, curves)


def texts(out):
    return (out / "report.html").read_text(), (out / "summary.md").read_text()


def seed_row(html, finding):
    seed = table_after(html, "Seed findings")
    return re.search(rf"<td>{re.escape(finding)}</td>.*?</tr>", seed, re.S).group(0)


def test_a_study_that_does_not_declare_the_practical_work_gets_no_seed_section(tmp_path):
    build_report([loss_grid(tmp_path / "s")], tmp_path / "out")
    for text in texts(tmp_path / "out"):
        assert "Seed reproduction" not in text and "Not measured by these studies" not in text
        assert "Learning curves — custom" in text  # the general views are all there
    # Beside a declared study, it is named as not judged and its grid is not evidence.
    ablation = ablation_study(tmp_path / "a")
    build_report([ablation, tmp_path / "s" / "custom"], tmp_path / "out2")
    html, _ = texts(tmp_path / "out2")
    assert "(ablation)" in html and "custom is not judged" in html
    assert "Not measured by these studies: learning rate, batch size" in html
    assert "<td>learning rate</td>" not in table_after(html, "Seed findings")


def test_a_declared_loss_study_is_judged_on_top1_within_one_optimizer(tmp_path):
    directory = loss_grid(tmp_path, reproduces="practical-work")
    assert read_study(directory).spec["reproduces"] == "practical-work"  # kept in spec.yaml
    build_report([directory], tmp_path / "out")
    html, summary = texts(tmp_path / "out")
    row = seed_row(html, "learning rate")
    # SGD only (Adam would add 20 points): lr 0.1 at batch 128 is 55, 56; lr 1 is 15, 16.
    assert "lr 1 / 0.1 / 0.001, bs 128, optimizer sgd" in row
    assert "best val top-1 lr 0.1, bs 128 − lr 1, bs 128: +40.0 pt" in row
    # The lowest learning rate's best val top-1 is 15.5 over its seeds, not a loss of ~2.
    assert "best val top-1 % at lr 0.001 15.5 " in row
    assert "batch size" in table_after(html, "Seed findings")
    assert "Seed reproduction" in summary


def test_the_spec_key_is_validated_and_leaves_the_hash_alone():
    tree = {"name": "x", "space": {"optim.lr": [0.1, 0.01]}}
    with pytest.raises(ConfigError, match=r"reproduces = 'seed'.*allowed: practical-work"):
        build_spec({**tree, "reproduces": "seed"})
    declared = build_spec({**tree, "reproduces": "practical-work"})
    assert spec_hash(declared) == spec_hash(build_spec(tree))
    # What study.py writes as spec.yaml, and the report reads back.
    stored = yaml.safe_load(yaml.safe_dump(declared.model_dump(mode="json")))
    assert stored["reproduces"] == "practical-work"


@pytest.mark.parametrize(
    ("name", "declared"),
    [
        ("seed_ablation", True),
        ("seed_ablation_cpu", True),
        ("seed_lr_batch", True),
        ("seed_lr_batch_cpu", True),
        ("optuna_asha", True),
        ("optuna_asha_cpu", True),
        ("smoke", False),
        ("grid5", False),
    ],
)
def test_the_shipped_practical_work_studies_declare_it(name, declared):
    spec = load_spec(REPO / "studies" / f"{name}.yaml")
    assert (spec.reproduces == "practical-work") is declared


def one_batch_size_grid(tmp_path):
    spec = {"name": "onebs", "base": {"epochs": 3}, "space": {"optim.lr": [0.1, 0.01, 0.001]}}
    curves = {
        f"b_{i}": ({"optim.lr": lr}, [20.0 + i, 25.0 + i, 30.0 + i], "TERMINATED", False)
        for i, lr in enumerate((0.1, 0.01, 0.001))
    }
    return fabricate_study(tmp_path, spec, curves)


def small_optuna(tmp_path, trials):
    curves = {
        f"o_{i:05d}": (
            {"optim.lr": 10 ** (-i / 2), "model.dropout": i / 20, "optim.name": "sgd"},
            [20.0 + 3 * i + e for e in range(4)],
            "TERMINATED",
            False,
        )
        for i in range(trials)
    }
    spec = {**OPTUNA_SPEC, "scheduler": {"name": "fifo"}, "name": f"search{trials}"}
    return fabricate_study(tmp_path, spec, curves)


def test_every_caption_describes_the_panels_drawn(tmp_path):
    studies = [
        one_batch_size_grid(tmp_path / "g"),
        small_optuna(tmp_path / "o4", 4),
        small_optuna(tmp_path / "o8", 8),
        loss_grid(tmp_path / "l"),
        ablation_study(tmp_path / "a"),
    ]
    report = build_report(studies, tmp_path / "out")
    assert report.panels and report.panels.keys() == report.images.keys()
    for stem, panels in report.panels.items():
        assert len(panels) == report.drawn_axes[stem], stem
    captions = {stem: c for s in report.sections for stem, c in s.figures}
    # One batch size: the compute bars alone, and the caption says no more.
    assert report.panels["onebs_timing"] == ["CPU-minutes reserved per trial, most expensive first"]
    assert "images per second" not in captions["onebs_timing"]
    assert "seconds per epoch" not in captions["onebs_timing"].lower()
    assert len(report.panels["custom_timing"]) == 3
    assert "training images per second" in captions["custom_timing"]
    # 4 trials are too few for PED-ANOVA: the history alone, and the caption says why.
    assert report.panels["search4_optuna"][0].startswith("optimization history")
    assert len(report.panels["search4_optuna"]) == 1
    assert "no parameter importance: 4 scored trials" in captions["search4_optuna"]
    assert "whiskers" not in captions["search4_optuna"]
    assert len(report.panels["search8_optuna"]) == 2
    assert "PED-ANOVA parameter importance (whiskers" in captions["search8_optuna"]
    # No interval is promised where one seed per configuration has none.
    assert "one seed per configuration (no interval)" in captions["search8_best_curves"]
    assert "t-interval" not in captions["search8_best_curves"]


def test_a_figure_without_its_batch_size_panels_has_one_axes(tmp_path):
    plot = fig_timing(read_study(one_batch_size_grid(tmp_path)))
    assert plot is not None and len(data_axes(plot.figure)) == len(plot.panels) == 1
    assert plot.figure.axes[0].patches  # the bars are drawn
    plt.close(plot.figure)


def test_heatmap_digits_follow_the_metric(tmp_path):
    for directory, pattern in (
        (loss_grid(tmp_path / "l"), r"\d\.\d{3}"),
        (loss_grid(tmp_path / "t", name="top", metric="val/top1"), r"\d+\.\d"),
    ):
        plot = fig_lr_batch_heatmap(read_study(directory))
        assert plot is not None
        values = [t.get_text() for t in plot.figure.axes[0].texts]
        assert values and all(re.fullmatch(pattern, v) for v in values), values
        plt.close(plot.figure)


def test_trial_curves_are_coloured_by_configuration(tmp_path):
    study = read_study(grid_study(tmp_path / "g"))  # 6 configurations, 2 seeds each
    plot = fig_trial_curves(study, [])
    assert plot is not None
    ax = plot.figure.axes[0]
    colours = {tuple(line.get_color()) for line in ax.lines if len(line.get_xdata()) > 1}
    assert len(colours) == study.trials["group"].nunique() == 6
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "learning rate 0.1, batch size 128" in legend and "diverged" in legend
    assert "one colour per configuration (6, named in the legend)" in plot.caption
    plt.close(plot.figure)
    # 12 configurations: still a colour each, but too many names for a legend.
    study = read_study(loss_grid(tmp_path / "l"))
    plot = fig_trial_curves(study, [])
    assert plot is not None and "(12: too many to name" in plot.caption
    ax = plot.figure.axes[0]
    assert len({tuple(line.get_color()) for line in ax.lines}) == 12
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["completed"]
    plt.close(plot.figure)


def test_tables_have_named_headers_and_markdown_does_not_promise_sorting(tmp_path):
    spec = {**OPTUNA_SPEC, "name": "asha"}
    curves = {
        f"o_{i:05d}": (
            {"optim.lr": 10 ** (-i / 2), "model.dropout": i / 20, "optim.name": "sgd"},
            [20.0 + 3 * i + e for e in range(9 if i % 3 == 0 else 3)],
            "TERMINATED",
            False,
        )
        for i in range(6)
    }
    report = build_report([fabricate_study(tmp_path, spec, curves)], tmp_path / "out")
    html, summary = texts(tmp_path / "out")
    tables = {t.caption: t.frame for s in report.sections for t in s.tables}
    assert "ASHA rungs" in tables and "All trials" in tables
    for caption, frame in tables.items():
        assert all(str(c).strip() for c in frame.columns), caption
    assert "Click" not in summary and re.search(r"\| what +\|", summary)
    assert re.search(r"All trials</h3>.*?</table></div><p class='note'>Click a column", html, re.S)


def failed_study(tmp_path):
    """Every trial failed before its first epoch, as `cifartune run` leaves such a study."""
    spec_tree = {"name": "broken", "base": {"epochs": 3}, "space": {"optim.lr": [0.1, 0.01]}}
    directory = fabricate_study(tmp_path, spec_tree, {}, state="failed")
    spec = build_spec(spec_tree)
    recorder = StudyRecorder(
        directory, lambda s: flatten(trial_config(spec, s)), spec.metric, "max", 1.0, 0.0
    )
    error = "DataError: train_subset 5000 is more than the 1000 training images"
    recorder.record_events(
        [
            TrialEvent(f"f_{i}", "ERROR", {"optim.lr": lr}, lambda: error)
            for i, lr in enumerate((0.1, 0.01))
        ]
    )
    meta = json.loads((directory / "study.json").read_text())
    meta.update(error=f"2 of 2 trials: {error}", finished="2026-01-01T00:01:00+00:00")
    (directory / "study.json").write_text(json.dumps(meta))
    return directory, error


def test_a_failed_study_is_reported_as_failed_with_its_error(tmp_path):
    directory, error = failed_study(tmp_path / "f")
    other = one_batch_size_grid(tmp_path / "g")
    build_report([directory, other], tmp_path / "out")
    html, summary = texts(tmp_path / "out")
    for text in (html, summary):
        assert f"This study failed: every trial failed (2 of 2 trials: {error})" in text
        assert "rerun the report when it finishes" not in text
    overview = table_after(html, "Overview")
    assert f"<td>state</td><td>failed: 2 of 2 trials: {error}</td>" in overview
    side = table_after(html, "Studies")
    assert "<td>broken</td><td>failed: 2 of 2" in side and "<td>onebs</td><td>completed" in side
    trials = table_after(html, "All trials")
    assert trials.count(error) == 2 and "failed" in trials
    assert "No trial has a validation result." in html


def test_factors_draw_drawn_values_on_an_axis_and_say_which_epoch_they_compare(tmp_path):
    # An Optuna + ASHA study of 8 trials: lr and batch size come from ranges, a value axis
    # however few trials drew them (not 8 categories named with 17 digits); trials ran
    # different epochs, which the figure itself says, not only its caption.
    study = read_study(asha_study(tmp_path))
    plot = fig_factors(study)
    assert plot is not None
    by_label = {ax.get_xlabel(): ax for ax in plot.figure.axes}
    assert by_label["learning rate"].get_xscale() == "log"
    drawn = sorted(by_label["batch size"].collections[0].get_offsets()[:, 0])
    scored = study.trials.dropna(subset=["best_metric"])
    assert set(drawn) <= set(scored["config/batch_size"].astype(float))  # values, not positions
    assert "at epoch 1" in plot.figure.get_suptitle()


def test_past_drawn_curves_the_best_trials_are_drawn_over_a_band_of_all(tmp_path, monkeypatch):
    monkeypatch.setattr(figures_curves, "DRAWN_CURVES", 4)
    study = read_study(loss_grid(tmp_path))  # 24 trials; val/loss: lower is better
    plot = fig_trial_curves(study, [])
    assert plot is not None
    ax = plot.figure.axes[0]
    median = [line for line in ax.lines if line.get_color() == "0.45"]
    drawn = [line for line in ax.lines if line.get_color() != "0.45"]
    # The 4 trials with the lowest loss, and no other.
    lowest = sorted(min(line.get_ydata()) for line in drawn)
    assert lowest == sorted(study.trials["best_metric"])[:4]
    # The band and its median summarise all 24 trials, epoch by epoch.
    per_epoch = study.epochs.groupby("epoch")["val/loss"]
    assert list(median[0].get_ydata()) == pytest.approx(list(per_epoch.median()))
    (band,) = ax.collections
    heights = band.get_paths()[0].vertices[:, 1]
    assert heights.min() == pytest.approx(per_epoch.quantile(0.1).min())
    assert heights.max() == pytest.approx(per_epoch.quantile(0.9).max())
    assert plot.caption.startswith("The 4 best trials' val/loss per epoch, of 24: ")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "all 24 trials: 10th-90th percentile" in legend
    plt.close(plot.figure)


def test_a_large_study_lists_its_best_trials_and_every_trial_in_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "SHOWN_TRIALS", 5)
    out = tmp_path / "out"
    build_report([loss_grid(tmp_path)], out)
    listed = pd.read_csv(out / "trials.csv")
    assert len(listed) == 24
    losses = pd.to_numeric(listed["best val/loss"])
    assert losses.is_monotonic_increasing  # val/loss: the lowest first
    html = (out / "report.html").read_text()
    assert "The best 5 of 24 trials; all of them are in trials.csv" in html
    shown = table_after(html, "Trials")
    assert shown.count("<tr>") == 1 + 5  # its header and the 5 best
