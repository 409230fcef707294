"""``cifartune report``: read study results directories (Parquet + JSON; no Ray, no GPU) and
assemble the report's sections, then write report.html, summary.md and figures/."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cifartune.config.expand import asha_rungs
from cifartune.config.spec import SchedulerSpec
from cifartune.store.study_data import StudyData, read_study

from . import figures_cost, figures_curves, figures_optuna, figures_search
from .document import Report, Section, Table, render_html, render_markdown
from .findings import seed_section
from .plotting import Plot
from .population import population_section
from .stats import INTERVAL_NOTE, OVERFIT_RULE, overfitting_table
from .tables import (
    all_trials,
    asha_rung_table,
    best_configurations,
    overfitting_rows,
    overview,
    studies_side_by_side,
    variant_summary,
)

log = logging.getLogger(__name__)
# Trials listed on the page; a larger study's full list is a CSV file beside it.
SHOWN_TRIALS = 500


def study_rungs(study: StudyData) -> list[int]:
    """ASHA's rung epochs (none for other schedulers). Only the scheduler section and the
    trials' planned epochs are validated, so that specs saved by other versions still report."""
    scheduler = study.spec.get("scheduler") or {}
    if scheduler.get("name") != "asha" or study.trials.empty:
        return []
    top = int(pd.to_numeric(study.trials["max_epochs"]).max())
    try:
        section = SchedulerSpec.model_validate(scheduler)
    except ValueError as exc:
        log.warning("%s: no ASHA rungs from spec.yaml's scheduler (%s)", study.name, exc)
        return []
    return asha_rungs(section.grace_period, section.reduction_factor, section.max_epochs or top)


def state_paragraph(study: StudyData) -> str:
    """What a study that is not completed covers, by its state in study.json."""
    state, epochs = study.meta.get("state", "unknown"), len(study.epochs)
    if state == "completed":
        return ""
    if state == "failed":
        error = study.meta.get("error") or "no error recorded"
        return (
            f"This study failed: every trial failed ({error}). The report covers the {epochs} "
            "epochs its trials wrote before failing."
        )
    if state == "running":
        return (
            f"This study is running: the report covers the {epochs} epochs written so far; "
            "rerun the report when it finishes."
        )
    if state == "interrupted":
        return (
            f"This study was interrupted: the report covers the {epochs} epochs written before "
            f"it stopped; `cifartune resume {study.directory}` continues it."
        )
    return f"This study's state is {state!r}: the report covers the {epochs} epochs written."


def _head(study: StudyData, out: Path, prefix: str) -> Section:
    head = Section(f"Study {study.name}")
    state = state_paragraph(study)
    if state:
        head.paragraphs.append(state)
    if study.spec.get("description"):
        head.paragraphs.append(str(study.spec["description"]))
    head.tables.append(Table("Overview", overview(study)))
    best = best_configurations(study)
    if best.empty:
        finished = study.meta.get("state") in ("completed", "failed")
        head.paragraphs.append(f"No trial has a validation result{'' if finished else ' yet'}.")
    else:
        head.tables.append(
            Table("Best configurations (seed repeats grouped)", best, note=INTERVAL_NOTE)
        )
        variants = variant_summary(study)
        if not variants.empty:
            head.tables.append(Table("Variants", variants, note=INTERVAL_NOTE))
    trials = all_trials(study)
    if len(trials) > SHOWN_TRIALS:
        # Every trial in a file beside the report; the page keeps to what a reader scrolls.
        (out / f"{prefix}trials.csv").write_text(trials.to_csv(index=False))
        head.tables.append(
            Table(
                "Trials",
                trials.head(SHOWN_TRIALS),
                note=f"The best {SHOWN_TRIALS} of {len(trials):,} trials; all of them are in "
                f"{prefix}trials.csv beside this report.",
                sortable=True,
            )
        )
    elif not trials.empty:
        head.tables.append(Table("All trials", trials, sortable=True))
    return head


def study_sections(report: Report, study: StudyData, prefix: str) -> None:
    report.sections.append(_head(study, report.out, prefix))
    if study.epochs.empty:
        return
    rungs = study_rungs(study)

    def add(section: Section, stem: str, plot: Plot | None) -> None:
        report.add_figure(section, prefix + stem, plot)

    curves = Section(f"Learning curves — {study.name}")
    add(curves, "trial_curves", figures_curves.fig_trial_curves(study, rungs))
    add(curves, "best_curves", figures_curves.fig_best_curves(study))
    add(curves, "variant_accuracy", figures_curves.fig_variant_curves(study, "top1"))
    add(curves, "variant_loss", figures_curves.fig_variant_curves(study, "loss"))
    report.sections.append(curves)

    population = population_section(study, add)
    if population is not None:
        report.sections.append(population)

    search = Section(f"Search — {study.name}")
    importances = (
        figures_optuna.optuna_importances(study)
        if (study.spec.get("search") or {}).get("algorithm") == "optuna"
        else pd.DataFrame()
    )
    add(search, "optuna", figures_optuna.fig_optuna(study, importances))
    ranking = importances["importance"] if not importances.empty else pd.Series(dtype=float)
    add(search, "contour", figures_search.fig_contour(study, ranking))
    add(search, "lr_batch_heatmap", figures_search.fig_lr_batch_heatmap(study))
    add(search, "factors", figures_search.fig_factors(study))
    add(search, "parallel", figures_search.fig_parallel(study))
    report.sections.append(search)

    fit = Section(f"Overfitting — {study.name}")
    table = overfitting_table(study)
    judged = table[table["judged"]]
    if not judged.empty:
        fit.paragraphs.append(
            f"{int(judged['overfitting'].sum())} of {len(judged)} judged trials overfit. "
            + OVERFIT_RULE
        )
        add(fit, "overfitting", figures_cost.fig_overfitting(study))
        rows = overfitting_rows(study)
        fit.tables.append(
            Table(
                "What decides the flag, per trial",
                rows,
                note=f"Every flagged trial, then the unflagged ones whose loss rose most "
                f"({len(rows)} of {len(judged)}; all are in the figure)."
                if len(rows) < len(judged)
                else "",
            )
        )
    report.sections.append(fit)

    cost = Section(f"Cost — {study.name}")
    add(cost, "timing", figures_cost.fig_timing(study))
    add(cost, "asha", figures_cost.fig_asha(study, rungs))
    if rungs:
        cost.tables.append(Table("ASHA rungs", asha_rung_table(study, rungs)))
    report.sections.append(cost)


def build_report(
    directories: Sequence[Path | str], out: Path | None = None, title: str | None = None
) -> Report:
    """Read each study (a local path or a URI such as s3://...) and write report.html,
    summary.md and figures/ into `out`."""
    studies = [read_study(d) for d in directories]
    names = [s.name for s in studies]
    out = out or Path("reports") / "-vs-".join(names)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(title or f"cifartune report: {', '.join(names)}", out)
    if len(studies) > 1:
        compare = Section("Studies side by side")
        compare.tables.append(Table("Studies", studies_side_by_side(studies), note=INTERVAL_NOTE))
        report.add_figure(compare, "compare", figures_curves.fig_compare(studies))
        report.sections.append(compare)
    seed = seed_section(studies)
    if seed is not None:
        report.sections.append(seed)
    for study in studies:
        study_sections(report, study, prefix=f"{study.name}_" if len(studies) > 1 else "")
    (out / "report.html").write_text(render_html(report))
    (out / "summary.md").write_text(render_markdown(report))
    return report
