import re
import shutil
import subprocess

import pandas as pd
import pytest

from cifartune.report import build_report, mean_ci
from cifartune.results import read_study

from .helpers import run_cli
from .studies import fabricate_study

GRID_SPEC = {
    "name": "grid",
    "base": {"epochs": 4},
    "space": {"optim.lr": [1.0, 0.1, 0.001], "batch_size": [32, 128]},
    "repeats": 2,
}
ABLATION_SPEC = {
    "name": "ablation",
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


def ablation_study(tmp_path):
    curves = {}
    for i, (variant, base) in enumerate(
        [("baseline", 40.0), ("standardize", 45.0), ("batchnorm", 60.0)]
    ):
        for seed in (0, 1):
            curves[f"a_{i}{seed}"] = (
                {"variant": variant, "seed": seed},
                [base - 8, base - 4, base - 1, base + seed, base],
                "TERMINATED",
                False,
            )
    return fabricate_study(tmp_path, ABLATION_SPEC, curves)


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


def test_grid_report_has_every_section_and_figure_and_true_tables(tmp_path):
    directory = grid_study(tmp_path)
    report = build_report([directory], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    for heading in (
        "Study grid",
        "Learning curves — grid",
        "Factors — grid",
        "Overfitting — grid",
        "Cost — grid",
        "Seed reproduction",
        "Best configurations",
    ):
        assert heading in text, heading
    images = embedded_images(text)
    assert len(images) == len(report.images) >= 6
    assert all(len(data) > 5000 for _, data in images)
    for stem in report.images:
        assert (tmp_path / "out" / "figures" / f"{stem}.png").is_file()
        assert (tmp_path / "out" / "figures" / f"{stem}.svg").is_file()
    assert "lr_batch_heatmap" in report.images and "timing" in report.images
    # The best configuration in the table is the best in the data: lr 0.1, batch 128, both seeds.
    best = read_study(directory).trials
    best_group = (
        best.groupby(["config/optim.lr", "config/batch_size"])["best_metric"].mean().idxmax()
    )
    assert best_group == (0.1, 128)
    first_row = re.search(r"Best configurations.*?<tbody>\s*<tr>(.*?)</tr>", text, re.S).group(1)
    cells = re.findall(r"<td>(.*?)</td>", first_row)
    assert cells[:3] == ["0.1", "128", "2"]
    assert cells[3] == "55.50 ± 6.36"  # mean of (55, 56); 12.71 * sd / sqrt 2 = 6.355
    assert "53.00 ± 12.71" in first_row  # test top1 of the two scored repeats
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert re.search(r"\|\s+0.1\s+\|\s+128\s+\|\s+2\s+\|\s+55.50 ± 6.36", summary)
    assert "![" in summary


def test_ablation_report_summarizes_variants_and_fills_the_seed_table(tmp_path):
    report = build_report([ablation_study(tmp_path)], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "Variants (mean ± 95% CI over seeds)" in text
    assert {"variant_accuracy", "variant_loss"} <= set(report.images)
    seed_rows = re.search(r"Seed findings.*?</table>", text, re.S).group(0)
    assert re.search(r"\+ batch norm.*?<span class='ok'>yes</span>", seed_rows, re.S)
    assert "not in these studies" in seed_rows  # no learning-rate grid here


def test_optuna_asha_report_has_history_importance_and_rungs(tmp_path):
    report = build_report([optuna_study(tmp_path)], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert {"optuna", "asha", "parallel", "factors"} <= set(report.images)
    assert "ASHA rungs" in text
    rungs = re.search(r"ASHA rungs.*?</table>", text, re.S).group(0)
    assert re.findall(r"<td>(\d+)</td>", rungs) == ["1", "8", "3", "6", "9", "3"]


def test_several_studies_make_one_comparison_report(tmp_path):
    a, b = grid_study(tmp_path / "a"), ablation_study(tmp_path / "b")
    report = build_report([a, b], tmp_path / "out", title="two studies")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "Studies side by side" in text and "<title>two studies</title>" in text
    assert "Study grid" in text and "Study ablation" in text
    assert "compare" in report.images


def test_running_study_says_so_and_one_without_results_still_reports(tmp_path):
    running = grid_study(tmp_path / "r", state="running")
    build_report([running], tmp_path / "out1")
    assert "This study is running" in (tmp_path / "out1" / "report.html").read_text()
    empty = fabricate_study(tmp_path / "e", {**GRID_SPEC, "name": "empty"}, {}, state="running")
    build_report([empty], tmp_path / "out2")
    text = (tmp_path / "out2" / "report.html").read_text()
    assert "No trial has a validation result yet" in text
    assert "no trial has finished an epoch yet" in text


def test_single_trial_study_reports(tmp_path):
    one = fabricate_study(
        tmp_path,
        {"name": "one", "base": {"epochs": 3}},
        {"t0": ({}, [10.0, 20.0, 30.0], "TERMINATED", False)},
    )
    report = build_report([one], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "best_curves" in report.images
    assert "nothing varies between trials" in text


def test_report_cli_rejects_a_directory_that_is_not_a_study(tmp_path):
    result = run_cli(["report", str(tmp_path)])
    assert result.returncode == 2
    assert "not a cifartune study results directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_mean_ci_uses_student_t():
    mean, half, n = mean_ci(pd.Series([1.0, 2.0, 3.0]))
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.30 * 1.0 / 3**0.5, rel=1e-3)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    build_report([grid_study(tmp_path)], tmp_path / "out")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,4000",
            f"--screenshot={shot}",
            (tmp_path / "out" / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 4000)
    # A rendered page, not a blank one: plenty of non-white pixels.
    dark = sum(1 for p in image.getdata() if p < 200)
    assert dark > 20_000


def test_seed_table_compares_the_search_with_the_seed_recipe_at_equal_fidelity(tmp_path):
    curves = {
        f"a_{v}{s}": ({"variant": v, "seed": s}, [30.0, 40.0 + s], "TERMINATED", False)
        for v in ("baseline", "standardize", "batchnorm")
        for s in (0, 1)
    }
    ablation = fabricate_study(
        tmp_path / "a",
        {**ABLATION_SPEC, "base": {"epochs": 2}},
        curves,
        test_scores={"a_batchnorm0": 41.0, "a_batchnorm1": 43.0},
    )
    search_spec = {
        **OPTUNA_SPEC,
        "base": {"epochs": 2},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    }
    search = fabricate_study(
        tmp_path / "s",
        search_spec,
        {
            f"o_{i}": (
                {"optim.lr": 0.01 * (i + 1), "model.dropout": 0.1, "optim.name": "sgd"},
                [30.0, 45.0 + i],
                "TERMINATED",
                False,
            )
            for i in range(4)
        },
        test_scores={"o_3": 47.5},
    )
    build_report([ablation, search], tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    seed = re.search(r"Seed findings.*?</table>", text, re.S).group(0)
    row = re.search(r"<td>search</td>.*?</tr>", seed, re.S).group(0)
    assert "<span class='ok'>yes</span>" in row
    assert "47.5% vs 42.0% for the seed&#x27;s best recipe" in row
