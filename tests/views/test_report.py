import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from cifartune.store.study_data import StudyData, read_study
from cifartune.views.reports import build_report, difference, estimate
from cifartune.views.reports.document import Report, Section, Table, render_html, render_markdown
from cifartune.views.reports.stats import fmt_estimate, overfitting_table, t95
from cifartune.views.reports.verdicts import Outcome, effect

from ..support import CHROMIUM, fabricate_study, headless_chromium, run_cli, write_spec

# The grid and the ablation stand for the practical work's studies (they declare it); the
# Optuna search is a user's own.
GRID_SPEC = {
    "name": "grid",
    "reproduces": "practical-work",
    "base": {"epochs": 4},
    "space": {"optim.lr": [1.0, 0.1, 0.001], "batch_size": [32, 128]},
    "repeats": 2,
}
ABLATION_SPEC = {
    "name": "ablation",
    "reproduces": "practical-work",
    "base": {"epochs": 5},
    "variants": {
        "baseline": {},
        "standardize": {"extends": "baseline", "data.normalize": "standardize"},
        "batchnorm": {"extends": "standardize", "model.batchnorm": True},
    },
    "repeats": 2,
}
OPTUNA_SPEC = {
    "name": "search",
    "base": {"epochs": 9},
    "space": {
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1, "log": True},
        "model.dropout": {"type": "float", "low": 0, "high": 0.5},
        "optim.name": ["sgd", "adam"],
    },
    "search": {"algorithm": "optuna", "samples": 8},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
}


def grid_study(tmp_path, state="completed"):
    curves = {}
    for i, (lr, bs, seed) in enumerate(
        [(lr, bs, s) for lr in (1.0, 0.1, 0.001) for bs in (32, 128) for s in (0, 1)]
    ):
        top = {1.0: 10.0, 0.1: 50.0, 0.001: 25.0}[lr] + (5 if bs == 128 else 0) + seed
        diverged = lr == 1.0 and bs == 32
        curves[f"g_{i:05d}"] = (
            {"optim.lr": lr, "batch_size": bs, "seed": seed},
            [top - 6, top - 3, top - 1, top][: 2 if diverged else 4],
            "TERMINATED",
            diverged,
        )
    return fabricate_study(
        tmp_path, GRID_SPEC, curves, state=state, test_scores={"g_00006": 52.0, "g_00007": 54.0}
    )


def ablation_study(tmp_path, spec=ABLATION_SPEC, epochs=5):
    curves = {}
    for i, (variant, base) in enumerate(zip(spec["variants"], (40.0, 45.0, 60.0), strict=True)):
        for seed in (0, 1, 2):
            top1 = [base - 8, base - 4, base - 1, base + seed, base][-epochs:]
            curves[f"a_{i}{seed}"] = ({"variant": variant, "seed": seed}, top1, "TERMINATED", False)
    return fabricate_study(tmp_path, {**spec, "repeats": 3}, curves)


def optuna_study(tmp_path):
    curves = {}
    for i in range(8):
        epochs = 9 if i % 3 == 0 else (3 if i % 3 == 1 else 1)
        curves[f"o_{i:05d}"] = (
            {
                "optim.lr": 10 ** (-i / 2),
                "model.dropout": i / 20,
                "optim.name": ["sgd", "adam"][i % 2],
            },
            [20.0 + 3 * i + e for e in range(epochs)],
            "TERMINATED",
            False,
        )
    return fabricate_study(tmp_path, OPTUNA_SPEC, curves)


def embedded_images(text):
    return re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", text)


def table_after(text, caption):
    return re.search(rf"<h3>{re.escape(caption)}</h3>.*?</table>", text, re.S).group(0)


def test_grid_report_has_its_views_and_true_tables(tmp_path):
    directory = grid_study(tmp_path)
    report = build_report([directory], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    for heading in ("Study grid", "Learning curves — grid", "Search — grid", "Seed reproduction"):
        assert heading in text, heading
    images = embedded_images(text)
    assert len(images) == len(report.images) >= 5
    assert {"trial_curves", "best_curves", "lr_batch_heatmap", "factors", "timing"} <= set(
        report.images
    )
    for stem in report.images:
        assert (tmp_path / "out" / "figures" / f"{stem}.svg").is_file()
    # Two factors: the heatmap shows them; parallel coordinates of a full grid say nothing.
    assert "parallel" not in report.images
    # The best configuration in the table is the best in the data: lr 0.1, batch 128, both seeds,
    # shown as the mean and the two seeds (no t-interval at n = 2).
    best = read_study(directory).trials
    assert best.groupby(["config/optim.lr", "config/batch_size"])[
        "best_metric"
    ].mean().idxmax() == (
        0.1,
        128,
    )
    first_row = re.search(
        r"<tbody><tr>(.*?)</tr>", table_after(text, "Best configurations (seed repeats grouped)")
    ).group(1)
    cells = re.findall(r"<td>(.*?)</td>", first_row)
    assert cells[:4] == ["0.1", "128", "2", "55.50 (55.00, 56.00)"]
    assert "53.00 (52.00, 54.00)" in first_row and "±" not in first_row
    trials = table_after(text, "All trials")
    assert "class='sortable'" in trials and trials.count("<tr>") == 1 + 12
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert re.search(r"\| 0.1 +\| 128 +\| 2 +\| 55.50 \(55.00, 56.00\)", summary)


def test_ablation_report_judges_findings_with_three_outcomes(tmp_path):
    report = build_report([ablation_study(tmp_path)], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert {"variant_accuracy", "variant_loss", "trial_curves"} <= set(report.images)
    seed = table_after(text, "Seed findings")
    # batch norm 60 vs standardize 45 + seed (0, 1, 2): a clear difference, so it reproduces.
    row = re.search(r"<td>\+ batch norm</td>.*?</tr>", seed, re.S).group(0)
    assert "<span class='ok'>reproduces</span>" in row
    assert "5 epochs, 3 seeds" in row  # every row carries its fidelity
    # The baseline reaches 40% train top-1: an overfitting claim on it is inconclusive, with
    # the measured reason on the row.
    row = re.search(r"<td>baseline</td>.*?</tr>", seed, re.S).group(0)
    assert "inconclusive at this fidelity" in row and "baseline underfits" in row
    assert "How a finding is judged" in text
    assert "Not measured by these studies: learning rate, batch size" in text


def test_optuna_asha_report_compares_trials_on_one_budget(tmp_path):
    report = build_report([optuna_study(tmp_path)], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert {"optuna", "trial_curves", "factors", "parallel", "asha"} <= set(report.images)
    rungs = table_after(text, "ASHA rungs")
    assert re.findall(r"<td>(\d+)</td>", rungs) == ["1", "8", "3", "6", "9", "3"]
    # Trials ran 1, 3 or 9 epochs: the history and importance use epoch 1, which all reached.
    assert "val/top1 at epoch 1" in text and "compared at epoch 1" in text


def test_several_studies_make_one_comparison_report(tmp_path):
    a, b = grid_study(tmp_path / "a"), ablation_study(tmp_path / "b")
    report = build_report([a, b], tmp_path / "out", title="two studies")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "Studies side by side" in text and "<title>two studies</title>" in text
    assert "Study grid" in text and "Study ablation" in text
    assert "compare" in report.images


def test_running_and_empty_studies_report_without_placeholders(tmp_path):
    running = grid_study(tmp_path / "r", state="running")
    build_report([running], tmp_path / "out1")
    assert "This study is running" in (tmp_path / "out1" / "report.html").read_text()
    empty = fabricate_study(tmp_path / "e", {**GRID_SPEC, "name": "empty"}, {}, state="running")
    build_report([empty], tmp_path / "out2")
    text = (tmp_path / "out2" / "report.html").read_text()
    assert "No trial has a validation result yet" in text
    assert "<img" not in text and "no variants" not in text


def test_one_epoch_trials_with_variants_report(tmp_path):
    spec = {**ABLATION_SPEC, "name": "short", "base": {"epochs": 1}}
    report = build_report([ablation_study(tmp_path, spec, epochs=1)], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "Variants" in text and "0 of 0 judged" in text
    # One point per curve says nothing: no curve figures, and no flag judged on one epoch.
    assert not {"trial_curves", "best_curves", "variant_accuracy"} & set(report.images)


def test_spec_and_result_text_is_escaped_everywhere(tmp_path):
    evil = "<script>alert(1)</script>"
    spec = {
        **ABLATION_SPEC,
        "name": "evil",
        "description": f"described {evil}",
        "variants": {**ABLATION_SPEC["variants"], evil: {"extends": "baseline"}},
    }
    spec["variants"].pop("batchnorm")
    build_report([ablation_study(tmp_path, spec)], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # description, tables
    assert f"<td>{evil}" not in text
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "<script>" not in summary and "&lt;script&gt;alert(1)" in summary


def test_estimate_and_welch_difference_match_hand_computation():
    est = estimate(pd.Series([1.0, 2.0, 3.0]))
    assert (est.mean, est.n) == (2.0, 3) and est.half == pytest.approx(4.303 / 3**0.5, rel=1e-3)
    # Welch: var 1/3 + 4/3 = 5/3; df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.94, t(2.94) = 3.219
    diff = difference([4.0, 5.0, 6.0], [0.0, 2.0, 4.0])
    assert diff.mean == 3.0 and diff.half == pytest.approx(3.2188 * math.sqrt(5 / 3), rel=1e-3)
    # One side measured once: the other side's one-sample interval.
    assert difference([10.0], [1.0, 2.0, 3.0]).half == pytest.approx(est.half, rel=1e-6)
    assert fmt_estimate([8.0, 9.0]) == "8.5 (8.0, 9.0)"  # n = 2: the seeds, no ± 6.4


@pytest.mark.parametrize("df", [1, 2, 2.94, 10, 30, 31, 47.5, 200])
def test_t_quantiles_and_welch_intervals_agree_with_scipy(df):
    # A table once rounded df = 31 to 2.0365 (exact: 2.0395): intervals narrower than stated.
    assert t95(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-9)
    rng = np.random.default_rng(int(df * 10))
    a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 3.0, 9)
    ours = difference(a, b)
    welch = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (ours.low, ours.high) == pytest.approx((welch.low, welch.high), rel=1e-9)
    one = scipy_stats.ttest_1samp(b, 0.0).confidence_interval(0.95)
    assert (estimate(b).low, estimate(b).high) == pytest.approx((one.low, one.high), rel=1e-9)


def test_effect_has_three_outcomes_on_unrounded_numbers():
    clear = difference([5.0, 5.2, 5.1], [1.0, 1.1, 0.9])
    assert effect("x", clear, higher=True).outcome is Outcome.REPRODUCES
    assert effect("x", clear, higher=False).outcome is Outcome.FAILS
    noisy = difference([5.0, 1.0, 9.0], [4.0, 6.0, 2.0])
    assert effect("x", noisy, higher=True).outcome is Outcome.INCONCLUSIVE
    # 1.495x slower reads "1.5x" rounded, but is below a 1.5x threshold.
    ratio = difference([1.494, 1.495, 1.496], [1.0, 1.0, 1.0], scale=1.5)
    assert effect("x", ratio, higher=True).outcome is Outcome.FAILS


def curves_study(losses: dict[str, list[float]], train: list[float] | None = None) -> StudyData:
    rows = [
        {
            "trial_id": tid,
            "epoch": e + 1,
            "val/loss": loss,
            "train/top1": (train or [10.0 + 5 * i for i in range(len(curve))])[e],
        }
        for tid, curve in losses.items()
        for e, loss in enumerate(curve)
    ]
    return StudyData(Path("."), {}, {}, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def test_overfitting_needs_an_early_minimum_and_a_sustained_rise():
    table = overfitting_table(
        curves_study(
            {
                "u_shape": [2.0, 1.5, 1.2, 1.0, 1.05, 1.2, 1.3, 1.4],
                "one_spike": [2.0, 1.8, 1.6, 1.4, 1.3, 1.2, 1.8, 1.1],
                "min_last": [2.0, 1.8, 1.6, 1.4, 2.5, 1.2, 1.3, 1.0],
                "too_short": [2.0, 1.0, 1.5],
            }
        )
    ).set_index("trial_id")
    assert table["overfitting"].to_dict() == {
        "min_last": False,
        "one_spike": False,
        "too_short": False,
        "u_shape": True,
    }
    assert table.loc["u_shape", "rise"] == pytest.approx(0.3)  # last 2 epochs, lowest 1.3
    assert not table.loc["too_short", "judged"]
    # Training accuracy no longer improving: a rising loss is not overfitting.
    flat = curves_study({"u": [2.0, 1.5, 1.2, 1.0, 1.05, 1.2, 1.3, 1.4]}, train=[50.0] * 8)
    assert not overfitting_table(flat)["overfitting"].any()


def test_report_cli_rejects_a_directory_that_is_not_a_study(tmp_path):
    result = run_cli(["report", str(tmp_path)])
    assert result.returncode == 2
    assert "not a cifartune study results directory" in result.stderr
    assert "Traceback" not in result.stderr


# Runs once the page has loaded: records whether every figure decoded and which tables are
# wider than their container, in attributes that --dump-dom prints.
PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var wide = Array.prototype.slice.call(document.querySelectorAll('table')).filter(
    function (t) { return t.scrollWidth > t.parentElement.clientWidth + 1; });
  var body = document.body;
  body.setAttribute('data-images', imgs.length);
  body.setAttribute('data-broken', broken.length);
  body.setAttribute('data-overflowing', wide.length);
  body.setAttribute('data-width', window.innerWidth);
});</script>"""


def chromium_dom(html_path: Path, profile: Path) -> dict[str, int]:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must render the report: install Debian's chromium (see .ci/run)")
        pytest.skip("Debian's chromium package is not installed (CI installs it)")
    probed = html_path.with_name("probed.html")
    probed.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        headless_chromium(
            profile,
            "--window-size=1280,1000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.as_uri(),
        ),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, f"chromium printed no page: {result.stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', body.group(1))}


def test_report_renders_in_headless_chromium_with_every_figure_and_no_overflow(tmp_path):
    studies = [
        grid_study(tmp_path / "g"),
        ablation_study(tmp_path / "a"),
        optuna_study(tmp_path / "o"),
    ]
    report = build_report(studies, tmp_path / "out")
    dom = chromium_dom(tmp_path / "out" / "report.html", tmp_path / "profile")
    assert dom["width"] == 1280
    assert dom["images"] == len(report.images) > 10
    assert dom["broken"] == 0
    assert dom["overflowing"] == 0


def test_the_chromium_probe_sees_a_broken_image_and_an_overflowing_table(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><img src='data:image/png;base64,AAAA'>"
        "<div style='width:300px'><table><tr><td style='white-space:nowrap'>"
        + "x" * 400
        + "</td></tr></table></div></body></html>"
    )
    dom = chromium_dom(page, tmp_path / "profile")
    assert dom["broken"] == 1 and dom["overflowing"] == 1


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    """A real Ray study: 2 variants x 2 seeds x 2 epochs on the bundled data."""
    root = tmp_path_factory.mktemp("real")
    spec = write_spec(
        root,
        name="real",
        description="a real study <b>bold</b>",
        variants={"baseline": {}, "standardize": {"data.normalize": "standardize"}},
        repeats=2,
        reproduces="practical-work",
    )
    result = run_cli(["run", str(spec), "--storage", str(root / "r")], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "r" / "real"


@pytest.mark.slow
def test_report_of_a_real_ray_study(real_study, tmp_path):
    result = run_cli(["report", str(real_study), "--out", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "out" / "report.html").read_text()
    study = read_study(real_study)
    assert len(study.trials) == 4 and set(study.trials["variant"]) == {"baseline", "standardize"}
    assert "a real study &lt;b&gt;bold&lt;/b&gt;" in text
    assert {"trial_curves", "variant_accuracy", "variant_loss", "best_curves"} <= {
        p.stem for p in (tmp_path / "out" / "figures").glob("*.png")
    }
    # The variants table holds the Parquet's numbers: best val top-1 over the 2 seeds.
    variants = table_after(text, "Variants")
    for variant in ("baseline", "standardize"):
        values = study.trials[study.trials["variant"] == variant]["best_metric"]
        assert f"<td>{variant}</td><td>2</td><td>{fmt_estimate(values)}</td>" in variants
    trials = table_after(text, "All trials")
    assert all(t in trials for t in study.trials["trial_id"])
    assert "Seed reproduction" in text and "+ standardization" in text


def test_code_spans_are_code_in_the_page_and_backticks_in_the_summary(tmp_path):
    section = Section("PBT", paragraphs=["replay it with `cifartune train --replay r/<a>`"])
    section.tables.append(Table("of `b`", pd.DataFrame({"trial": ["`b`"]}), note="see `c`"))
    report = Report("r", tmp_path, [section])
    page = render_html(report)
    assert "`" not in page
    for code in ("cifartune train --replay r/&lt;a&gt;", "b", "c"):
        assert f"<code>{code}</code>" in page
    assert "`cifartune train --replay r/&lt;a&gt;`" in render_markdown(
        Report("r", tmp_path, [section])
    )
