"""``cifartune report``: one self-contained HTML file, the figures as PNG/SVG, and a Markdown
summary, built from study results directories alone (Parquet + JSON; no Ray, no GPU)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from . import figures
from .results import StudyData, read_study

# Two-sided 95% Student t quantiles by degrees of freedom (1..30); beyond, the normal 1.96.
_T95 = [
    12.71,
    4.30,
    3.18,
    2.78,
    2.57,
    2.45,
    2.36,
    2.31,
    2.26,
    2.23,
    2.20,
    2.18,
    2.16,
    2.14,
    2.13,
    2.12,
    2.11,
    2.10,
    2.09,
    2.09,
    2.08,
    2.07,
    2.07,
    2.06,
    2.06,
    2.06,
    2.05,
    2.05,
    2.05,
    2.04,
]


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of its 95% confidence interval (Student t), and the count."""
    clean = pd.to_numeric(values, errors="coerce").dropna()
    n = len(clean)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(clean.iloc[0]), math.nan, 1
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return float(clean.mean()), float(t * clean.std(ddof=1) / math.sqrt(n)), n


def fmt_ci(values: pd.Series, digits: int = 2) -> str:
    mean, half, n = mean_ci(values)
    if n == 0:
        return "–"
    if n == 1 or math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file stem, caption)


@dataclass
class Report:
    title: str
    out: Path
    sections: list[Section] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def add_figure(
        self, section: Section, stem: str, figure: Figure | None, caption: str, missing: str
    ) -> None:
        """Save `figure` as PNG and SVG and reference it, or say in the section why it is absent."""
        import matplotlib.pyplot as plt

        if figure is None:
            section.paragraphs.append(f"<em>{html.escape(caption.split(':')[0])}: {missing}</em>")
            return
        target = self.out / "figures"
        target.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        self.images[stem] = buffer.getvalue()
        (target / f"{stem}.png").write_bytes(self.images[stem])
        figure.savefig(target / f"{stem}.svg", bbox_inches="tight")
        plt.close(figure)
        section.figures.append((stem, caption))


def _study_overview(study: StudyData) -> pd.DataFrame:
    meta, trials = study.meta, study.trials
    versions = meta.get("versions", {})
    hardware = meta.get("hardware", {})
    spec = study.spec
    rows = {
        "state": meta.get("state", "?"),
        "started / finished": f"{meta.get('started', '?')} / {meta.get('finished', '–')}",
        "search": f"{(spec.get('search') or {}).get('algorithm', 'grid')}, "
        f"{(spec.get('scheduler') or {}).get('name', 'fifo')} scheduler, "
        f"metric {study.metric} ({study.mode})",
        "trials": _counts(trials),
        "epochs recorded": f"{len(study.epochs)}",
        "compute": f"{trials['cpu_s'].sum() / 3600:.2f} CPU-hours, "
        f"{trials['gpu_s'].sum() / 3600:.2f} GPU-hours"
        if not trials.empty
        else "–",
        "resources per trial": str(spec.get("resources", {})),
        "data": _data_line(study),
        "spec hash": meta.get("spec_hash", "?"),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "hardware": f"{hardware.get('host', '?')}: {hardware.get('cpus', '?')} CPUs, "
        f"GPUs: {', '.join(hardware.get('gpus') or []) or 'none'}",
    }
    return pd.DataFrame({"": list(rows), "value": list(rows.values())})


def _data_line(study: StudyData) -> str:
    base = study.spec.get("base", {}) or {}
    data = base.get("data", {}) or {}
    source = data.get("dir") or "bundled slice"
    subset = data.get("train_subset")
    return (
        f"{source}; train subset {subset or 'all'}; val {data.get('val_size') or '10%'}; "
        f"{base.get('epochs', '?')} epochs"
    )


def _counts(trials: pd.DataFrame) -> str:
    if trials.empty:
        return "none yet"
    counts = trials["stop_reason"].value_counts()
    return f"{len(trials)}: " + ", ".join(f"{n} {k}" for k, n in counts.items())


def best_configurations(study: StudyData, n: int = 5) -> pd.DataFrame:
    """Configurations (seed repeats grouped) ranked by mean best validation metric, with test."""
    scored = study.trials.dropna(subset=["best_metric"])
    if scored.empty:
        return pd.DataFrame()
    factor_keys = study.factor_keys()
    rows = []
    for group, members in scored.groupby("group"):
        first = members.iloc[0]
        test = study.test[study.test["group"] == group] if not study.test.empty else pd.DataFrame()
        row = {"variant": first["variant"]} if study.has_variants() else {}
        row.update({figures.short(k): figures._fmt(first[k]) for k in factor_keys})
        row.update(
            {
                "seeds": len(members),
                f"best {study.metric}": fmt_ci(members["best_metric"]),
                "_sort": members["best_metric"].mean(),
                "best epoch": ", ".join(str(int(e)) for e in members["best_epoch"].dropna()),
                "test top1": fmt_ci(test["test/top1"]) if not test.empty else "not scored",
                "test loss": fmt_ci(test["test/loss"], 3) if not test.empty else "–",
                "stop": ", ".join(sorted(set(members["stop_reason"]))),
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("_sort", ascending=study.mode == "min")
    return table.drop(columns="_sort").head(n).reset_index(drop=True)


def variant_summary(study: StudyData) -> pd.DataFrame:
    """Per variant, over seeds: best validation metric, minimum validation loss, final gap, test."""
    trials = study.trials
    if trials.empty or trials["variant"].astype(str).eq("").all():
        return pd.DataFrame()
    gaps = (
        figures.overfitting_table(study).set_index("trial_id") if not study.epochs.empty else None
    )
    order = list((study.spec.get("variants") or {}).keys()) or sorted(trials["variant"].unique())
    rows = []
    for variant in order:
        members = trials[trials["variant"] == variant]
        if members.empty:
            continue
        ids = members["trial_id"]
        test = (
            study.test[study.test["trial_id"].isin(ids)] if not study.test.empty else pd.DataFrame()
        )
        over = gaps.reindex(ids) if gaps is not None else pd.DataFrame()
        rows.append(
            {
                "variant": variant,
                "seeds": len(members),
                f"best {study.metric}": fmt_ci(members["best_metric"]),
                "min val loss": fmt_ci(over["min_val_loss"], 3) if not over.empty else "–",
                "epoch of min val loss": fmt_ci(over["min_val_loss_epoch"], 1)
                if not over.empty
                else "–",
                "final train-val gap": fmt_ci(over["train_val_gap"], 1) if not over.empty else "–",
                "test top1": fmt_ci(test["test/top1"]) if not test.empty else "not scored",
                "test loss": fmt_ci(test["test/loss"], 3) if not test.empty else "–",
                "stop": ", ".join(
                    f"{n} {k}" for k, n in members["stop_reason"].value_counts().items()
                ),
            }
        )
    return pd.DataFrame(rows)


FigureSpec = tuple[str, Callable[[StudyData], Figure | None], str, str]

FIGURES: list[tuple[str, list[FigureSpec]]] = [
    (
        "Learning curves",
        [
            (
                "best_curves",
                figures.fig_best_curves,
                "Best trials: top-1 accuracy and loss per epoch, train (solid) vs validation"
                " (dashed)"
                " and test (dotted, when scored every epoch); red marks a trial stopped by ASHA or"
                " diverged",
                "no trial has finished an epoch yet",
            ),
            (
                "variant_accuracy",
                lambda s: figures.fig_variant_curves(s, "top1"),
                "Each variant: accuracy per epoch, mean and 95% CI over seeds",
                "the study has no variants",
            ),
            (
                "variant_loss",
                lambda s: figures.fig_variant_curves(s, "loss"),
                "Each variant: loss per epoch, mean and 95% CI over seeds (a U-shaped validation"
                " loss"
                " is overfitting)",
                "the study has no variants",
            ),
        ],
    ),
    (
        "Factors",
        [
            (
                "lr_batch_heatmap",
                figures.fig_lr_batch_heatmap,
                "Learning rate x batch size: best validation top-1, mean over seeds (seed Q16)",
                "learning rate and batch size are not both searched",
            ),
            (
                "factors",
                figures.fig_factors,
                "Per factor: each trial's best validation metric (grey) with the mean and 95% CI",
                "nothing varies between trials",
            ),
            (
                "parallel",
                figures.fig_parallel,
                "Search overview: each trial across its searched values",
                "fewer than two searched factors",
            ),
        ],
    ),
    (
        "Overfitting",
        [
            (
                "overfitting",
                figures.fig_overfitting,
                "Overfitting diagnosis: where the validation loss bottomed out, how far it rose"
                " after,"
                " and the final train-validation gap (seed Q18)",
                "no trial has two epochs yet",
            ),
        ],
    ),
    (
        "Cost",
        [
            (
                "timing",
                figures.fig_timing,
                "Time per epoch and training throughput against batch size, and compute per trial",
                "no epochs recorded",
            ),
            (
                "asha",
                figures.fig_asha,
                "ASHA: trials reaching each rung and the budget it saved",
                "the study does not use ASHA",
            ),
            (
                "optuna",
                figures.fig_optuna,
                "Optuna: optimization history and parameter importance",
                "the study does not use Optuna",
            ),
        ],
    ),
]


def study_sections(report: Report, study: StudyData, prefix: str) -> None:
    head = Section(f"Study {study.name}")
    state = study.meta.get("state")
    if state != "completed":
        head.paragraphs.append(
            f"<strong>This study is {html.escape(str(state))}</strong>: the report covers the "
            f"{len(study.epochs)} epochs written so far; rerun the report when it finishes."
        )
    if study.spec.get("description"):
        head.paragraphs.append(html.escape(str(study.spec["description"])))
    head.tables.append(("Overview", _study_overview(study)))
    best = best_configurations(study)
    if best.empty:
        head.paragraphs.append("<em>No trial has a validation result yet.</em>")
    else:
        head.tables.append(
            ("Best configurations (repeats over seeds grouped; mean ± 95% CI)", best)
        )
    variants = variant_summary(study)
    if not variants.empty:
        head.tables.append(("Variants (mean ± 95% CI over seeds)", variants))
    report.sections.append(head)
    for title, specs in FIGURES:
        section = Section(f"{title} — {study.name}")
        for stem, make, caption, missing in specs:
            report.add_figure(
                section,
                f"{prefix}{stem}",
                make(study) if not study.epochs.empty else None,
                caption,
                missing,
            )
        if title == "Overfitting":
            table = figures.overfitting_table(study)
            if not table.empty:
                labels = figures.trial_labels(study)
                flagged = table[table["overfitting"]]
                flagged = flagged.assign(trial=flagged["trial_id"].map(labels))
                section.paragraphs.append(
                    f"{len(flagged)} of {len(table)} trials overfit (validation loss rose more "
                    "than 10% above its minimum)."
                )
                if not flagged.empty:
                    cols = [
                        "trial",
                        "min_val_loss_epoch",
                        "epochs",
                        "min_val_loss",
                        "final_val_loss",
                        "train_val_gap",
                    ]
                    section.tables.append(("Overfitting trials", flagged[cols].round(3).head(15)))
        if title == "Cost":
            rungs = figures.asha_rungs(study)
            if not rungs.empty:
                section.tables.append(("ASHA rungs", rungs))
        report.sections.append(section)


def build_report(
    directories: Sequence[Path], out: Path | None = None, title: str | None = None
) -> Report:
    """Read each study and write report.html, summary.md and figures/ into `out`."""
    studies = [read_study(Path(d)) for d in directories]
    names = [s.name for s in studies]
    out = out or Path("reports") / "-vs-".join(names)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(title or f"cifartune report: {', '.join(names)}", out)
    if len(studies) > 1:
        compare = Section("Studies side by side")
        compare.tables.append(
            (
                "Studies",
                pd.DataFrame(
                    [
                        {
                            "study": s.name,
                            "state": s.meta.get("state"),
                            "trials": _counts(s.trials),
                            f"best {s.metric}": (
                                f"{s.trials['best_metric'].max():.2f}"
                                if s.mode == "max"
                                else f"{s.trials['best_metric'].min():.3f}"
                            )
                            if not s.trials.empty
                            else "–",
                            "test top1 (best config)": fmt_ci(
                                s.test[s.test["rank"] == 1]["test/top1"]
                            )
                            if not s.test.empty
                            else "–",
                            "CPU-h": round(s.trials["cpu_s"].sum() / 3600, 2)
                            if not s.trials.empty
                            else 0,
                            "GPU-h": round(s.trials["gpu_s"].sum() / 3600, 2)
                            if not s.trials.empty
                            else 0,
                            "devices": ", ".join((s.meta.get("hardware") or {}).get("gpus") or [])
                            or "CPU",
                        }
                        for s in studies
                    ]
                ),
            )
        )
        report.add_figure(
            compare,
            "compare",
            figures.fig_compare(studies),
            "Validation accuracy of each study's best trial",
            "",
        )
        report.sections.append(compare)
    from .seed import seed_section

    seed = seed_section(studies)
    if seed is not None:
        report.sections.append(seed)
    for study in studies:
        study_sections(report, study, prefix=f"{study.name}_" if len(studies) > 1 else "")
    (out / "report.html").write_text(render_html(report))
    (out / "summary.md").write_text(render_markdown(report))
    return report


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;max-width:1180px;
margin:24px auto;padding:0 20px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:4px} h2{margin-top:2em;border-bottom:2px solid #e5e5ea;
padding-bottom:4px} h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0 1em;display:block;overflow-x:auto}
th,td{border:1px solid #d1d1d6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f7} tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0 2em} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#3a3a3c;margin-top:4px} nav a{margin-right:12px}
.meta{color:#6e6e73;font-size:.9em}
.ok{color:#1a7f37;font-weight:600} .no{color:#b42318;font-weight:600}
"""


def render_html(report: Report) -> str:
    def anchor(title: str) -> str:
        return "".join(c if c.isalnum() else "-" for c in title.lower())

    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p class='meta'>generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by "
        "cifartune report, from the studies' Parquet files</p><nav>",
    ]
    parts += [f"<a href='#{anchor(s.title)}'>{html.escape(s.title)}</a>" for s in report.sections]
    parts.append("</nav>")
    for section in report.sections:
        parts.append(f"<h2 id='{anchor(section.title)}'>{html.escape(section.title)}</h2>")
        parts += [f"<p>{p}</p>" for p in section.paragraphs]
        for caption, table in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(table.to_html(index=False, border=0, na_rep="–", escape=False))
        for stem, caption in section.figures:
            data = base64.b64encode(report.images[stem]).decode()
            parts.append(
                f"<figure id='fig-{stem}'><img alt='{html.escape(caption)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
                "</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        if not section.tables and not section.figures:
            continue
        lines += [f"## {section.title}", ""]
        for caption, table in section.tables:
            clean = table.map(
                lambda v: html.unescape(re.sub(r"<[^>]+>", "", v)) if isinstance(v, str) else v
            )
            lines += [f"**{caption}**", "", clean.to_markdown(index=False), ""]
        lines += [f"![{caption}](figures/{stem}.png)" for stem, caption in section.figures]
        lines.append("")
    return "\n".join(lines)
