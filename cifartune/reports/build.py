"""``cifartune report``: read study results directories (Parquet + JSON; no Ray, no GPU) and
assemble the report's sections, then write report.html, summary.md and figures/."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..results import StudyData, read_study
from ..spec import StudySpec, asha_rungs
from . import figures_cost, figures_curves, figures_search
from .document import Report, Section, Table, render_html, render_markdown
from .findings import seed_section
from .plotting import BAND_NOTE
from .stats import INTERVAL_NOTE, OVERFIT_RULE, budget_values, common_budget, overfitting_table
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


def study_rungs(study: StudyData) -> list[int]:
    """ASHA's rung epochs (none for other schedulers). Only the scheduler section and the
    trials' planned epochs are validated, so that specs saved by other versions still report."""
    scheduler = study.spec.get("scheduler") or {}
    if scheduler.get("name") != "asha" or study.trials.empty:
        return []
    top = int(pd.to_numeric(study.trials["max_epochs"]).max())
    try:
        spec = StudySpec.model_validate(
            {"name": "rungs", "base": {"epochs": top}, "scheduler": scheduler}
        )
    except ValueError as exc:
        log.warning("%s: no ASHA rungs from spec.yaml's scheduler (%s)", study.name, exc)
        return []
    return asha_rungs(spec)


def _head(study: StudyData) -> Section:
    head = Section(f"Study {study.name}")
    state = study.meta.get("state")
    if state != "completed":
        head.paragraphs.append(
            f"This study is {state}: the report covers the {len(study.epochs)} epochs written so "
            "far; rerun the report when it finishes."
        )
    if study.spec.get("description"):
        head.paragraphs.append(str(study.spec["description"]))
    head.tables.append(Table("Overview", overview(study)))
    best = best_configurations(study)
    if best.empty:
        head.paragraphs.append("No trial has a validation result yet.")
        return head
    head.tables.append(
        Table("Best configurations (seed repeats grouped)", best, note=INTERVAL_NOTE)
    )
    variants = variant_summary(study)
    if not variants.empty:
        head.tables.append(Table("Variants", variants, note=INTERVAL_NOTE))
    head.tables.append(
        Table(
            "All trials",
            all_trials(study),
            note="Click a column header to sort (the table reads the same without scripts).",
            sortable=True,
        )
    )
    return head


def study_sections(report: Report, study: StudyData, prefix: str) -> None:
    report.sections.append(_head(study))
    if study.epochs.empty:
        return
    rungs = study_rungs(study)
    _, budget_label = budget_values(study)
    budget = common_budget(study)
    budget_note = (
        f" Trials ran different numbers of epochs, so every trial is compared at epoch {budget}, "
        "which all of them reached."
        if budget
        else ""
    )

    def add(section: Section, stem: str, figure: object, caption: str) -> None:
        report.add_figure(section, prefix + stem, figure, caption)  # type: ignore[arg-type]

    curves = Section(f"Learning curves — {study.name}")
    add(
        curves,
        "trial_curves",
        figures_curves.fig_trial_curves(study, rungs),
        f"Every trial's {study.metric} per epoch, coloured by how it ended"
        + (
            "; dotted lines are ASHA's rungs and the black bar the lowest value that went on "
            "past the rung"
            if rungs
            else ""
        ),
    )
    add(
        curves,
        "best_curves",
        figures_curves.fig_best_curves(study),
        f"The best configurations: train (solid), validation (dashed) and test (dotted, when "
        f"scored every epoch); {BAND_NOTE}",
    )
    for metric, name in (("top1", "accuracy"), ("loss", "loss")):
        add(
            curves,
            f"variant_{name}",
            figures_curves.fig_variant_curves(study, metric),
            f"Each variant's {name} per epoch against the first variant (grey); {BAND_NOTE}"
            + ("; the y-axis is clipped to the bulk of the values" if metric == "loss" else ""),
        )
    report.sections.append(curves)

    search = Section(f"Search — {study.name}")
    importances = (
        figures_search.optuna_importances(study)
        if (study.spec.get("search") or {}).get("algorithm") == "optuna"
        else pd.DataFrame()
    )
    add(
        search,
        "optuna",
        figures_search.fig_optuna(study, importances),
        f"Optuna: {budget_label} per trial and the best so far; PED-ANOVA parameter importance "
        "(whiskers: its range when any one trial is left out)." + budget_note,
    )
    add(
        search,
        "contour",
        figures_search.fig_contour(
            study, importances["importance"] if not importances.empty else pd.Series(dtype=float)
        ),
        f"{budget_label} over the two most important continuous parameters, interpolated "
        "between the trials (dots)." + budget_note,
    )
    add(
        search,
        "lr_batch_heatmap",
        figures_search.fig_lr_batch_heatmap(study),
        f"Learning rate x batch size: {budget_label}, mean over seeds (seed Q16)",
    )
    add(
        search,
        "factors",
        figures_search.fig_factors(study),
        f"{budget_label} per searched factor: each trial (grey) and the mean with its 95% "
        "t-interval (from 3 trials on)." + budget_note,
    )
    add(
        search,
        "parallel",
        figures_search.fig_parallel(study),
        f"Each trial across its searched values, coloured by {budget_label}." + budget_note,
    )
    report.sections.append(search)

    fit = Section(f"Overfitting — {study.name}")
    table = overfitting_table(study)
    judged = table[table["judged"]]
    if not judged.empty:
        fit.paragraphs.append(
            f"{int(judged['overfitting'].sum())} of {len(judged)} judged trials overfit. "
            + OVERFIT_RULE
        )
        add(fit, "overfitting", figures_cost.fig_overfitting(study), "The flag's numbers per trial")
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
    add(
        cost,
        "timing",
        figures_cost.fig_timing(study),
        "Seconds per epoch (training alone and with evaluation) and throughput against batch "
        "size, mean over trials with 95% t-intervals; compute per trial",
    )
    add(cost, "asha", figures_cost.fig_asha(study, rungs), "ASHA: trials reaching each rung")
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
        report.add_figure(
            compare,
            "compare",
            figures_curves.fig_compare(studies),
            f"Validation top-1 of each study's best configuration; {BAND_NOTE}",
        )
        report.sections.append(compare)
    seed = seed_section(studies)
    if seed is not None:
        report.sections.append(seed)
    for study in studies:
        study_sections(report, study, prefix=f"{study.name}_" if len(studies) > 1 else "")
    (out / "report.html").write_text(render_html(report))
    (out / "summary.md").write_text(render_markdown(report))
    return report
