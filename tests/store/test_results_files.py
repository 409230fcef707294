"""What a study's files say, for the people who load them later: what really ran, tidy columns
that concatenate across studies, files the umask lets colleagues read, and CLI messages that
say what to do."""

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from cifartune.cli.main import main
from cifartune.config.trial import load_trial_config
from cifartune.engine import device
from cifartune.engine.data import describe_source
from cifartune.local.train import CONFIG_FILE, train_local
from cifartune.store.optuna_mirror import OptunaMirror
from cifartune.store.study_data import read_study

from ..support import REPO, fabricate_study, quick_config, run_cli, run_epochs


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_a_run_records_the_precision_auto_picked(tmp_path, monkeypatch, native, expected):
    monkeypatch.setattr(device, "native_bf16", lambda device: native)
    config = quick_config(data__train_subset=100, optim__name="momentum")
    train_local(config, tmp_path)
    row = run_epochs(tmp_path).iloc[0]
    assert row["effective/precision"] == expected
    assert row["effective/optim.momentum"] == 0.9  # the momentum optimizer's default
    assert row["effective/threads"] == 2 and row["effective/device"] == "cpu"
    assert row["effective/data.train_subset"] == 100 and row["effective/data.val_size"] == 200
    saved = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    assert saved["precision"] == "auto" and saved["effective"]["precision"] == expected
    # The file still loads as the run's config (train --resume reads it back).
    assert load_trial_config(tmp_path / CONFIG_FILE) == config


def test_momentum_is_recorded_only_where_it_applies(tmp_path):
    train_local(quick_config(data__train_subset=100, optim__name="adam"), tmp_path / "adam")
    train_local(quick_config(data__train_subset=100), tmp_path / "sgd")
    adam = run_epochs(tmp_path / "adam").iloc[0]
    sgd = run_epochs(tmp_path / "sgd").iloc[0]
    assert pd.isna(adam["effective/optim.momentum"]) and sgd["effective/optim.momentum"] == 0.0


SPEC = {
    "base": {"epochs": 2, "data": {"source": "bundled"}},
    "space": {"optim.lr": [0.1, 0.01]},
}
CURVES = {
    "t_0": ({"optim.lr": 0.1}, [20.0, 30.0], "TERMINATED", False),
    "t_1": ({"optim.lr": 0.01}, [15.0], "RUNNING", False),
}


def test_several_studies_read_as_one_table_keep_their_origin(tmp_path):
    import duckdb

    for name in ("alpha", "beta"):
        fabricate_study(tmp_path, {"name": name, **SPEC}, CURVES)
    # The queries docs/results.md gives: one schema for every file, so no union_by_name.
    rows = duckdb.sql(
        f'select study, trial_id, epoch, "time/ended_at" from read_parquet('
        f"'{tmp_path}/*/epochs/*/*.parquet') order by study, trial_id, epoch"
    ).df()
    assert rows["study"].tolist() == ["alpha"] * 3 + ["beta"] * 3
    import polars as pl

    frame = pl.read_parquet(f"{tmp_path}/*/epochs/*/*.parquet").sort(["study", "trial_id"])
    assert frame["study"].to_list() == ["alpha"] * 3 + ["beta"] * 3
    trials = duckdb.sql(
        f"select * from read_parquet('{tmp_path}/*/trials/*/*.parquet') "
        "qualify row_number() over (partition by study, trial_id order by seq desc) = 1"
    ).df()
    assert sorted(trials["study"]) == ["alpha", "alpha", "beta", "beta"]
    assert trials["variant"].isna().all()  # no variants: null, not ""
    assert set(trials["stop_reason"]) == {"completed", "running"}  # the outcome, Ray-free
    for column in ("reserved_cpu_s", "reserved_gpu_s", "cpu_s"):
        assert column in trials


def test_timestamps_are_parquet_timestamps(tmp_path):
    import pyarrow.parquet as pq

    study = fabricate_study(tmp_path, {"name": "stamps", **SPEC}, CURVES)
    schema = pq.read_schema(next((study / "epochs").glob("*/*.parquet")))
    assert str(schema.field("time/ended_at").type).startswith("timestamp")


@pytest.mark.parametrize(("umask", "mode"), [("022", 0o644), ("027", 0o640)])
def test_files_are_as_readable_as_the_umask_allows(tmp_path, umask, mode):
    target = tmp_path / "t.parquet"
    code = (
        "import pandas as pd, sys; from cifartune.store.tables import write_table; "
        "write_table(pd.DataFrame({'a': [1]}), sys.argv[1])"
    )
    subprocess.run(
        ["bash", "-c", f'umask {umask} && exec "$0" -c "$1" "$2"', sys.executable, code, target],
        cwd=REPO,
        check=True,
    )
    assert target.stat().st_mode & 0o777 == mode


def test_mirror_counts_are_ints_in_every_trial(tmp_path):
    study = fabricate_study(tmp_path, {"name": "counts", **SPEC}, CURVES)
    data = read_study(study)
    # A count column with a gap (a trial without a best epoch yet) reads back as floats.
    trials = data.trials.astype({"best_epoch": float, "epochs_run": float, "seed": float})
    mirror = OptunaMirror(study, {"name": "counts", **data.spec}, str(tmp_path / "j.log"))
    mirror.sync(trials, data.epochs)
    epochs = {t.user_attrs["trial_id"]: t.user_attrs["best_epoch"] for t in mirror.study.trials}
    assert epochs == {"t_0": 2, "t_1": 1} and all(type(v) is int for v in epochs.values())


def test_export_optuna_prints_code_that_opens_the_mirror(tmp_path, capsys):
    study = fabricate_study(tmp_path, {"name": "snippet", **SPEC}, CURVES)
    assert main(["export-optuna", str(study)]) == 0
    out = capsys.readouterr().out
    code = out.split("open it in Python with:\n", 1)[1].split("\nor in a browser", 1)[0]
    scope: dict = {}
    exec(code, scope)  # as a user pastes it: it imports what it uses
    assert len(scope["study"].trials) == 2
    assert f"cifartune dashboard {study}" in out
    sqlite = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["export-optuna", str(study), "--optuna-storage", sqlite]) == 0
    assert f"cifartune dashboard {study} --optuna-storage {sqlite}" in capsys.readouterr().out


def test_global_options_work_after_the_command_too(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: s\nrepeats: many\n")
    loud = run_cli(["validate", str(spec), "--debug"])
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_command_help_describes_the_command_its_arguments_and_defaults(capsys):
    for args, expected in [
        (["validate", "--help"], ["Check a study spec fully", "the study spec (YAML)"]),
        (["status", "--help"], ["Summarize a running or finished study", "(default: 2.0)"]),
        (["dashboard", "--help"], ["(default: 8080)", "(default: 127.0.0.1)"]),
    ]:
        with pytest.raises(SystemExit):
            main(args)
        out = capsys.readouterr().out
        for text in expected:
            assert text in out, (args, text)


def test_an_unknown_key_in_space_is_named_once(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nbase: {data: {source: bundled}}\nspace: {model.dropuot: [0.1]}\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "space.model.dropuot: unknown key; did you mean 'dropout'?" in err
    assert "model.dropuot: model.dropuot" not in err


def test_validate_does_not_claim_a_download_that_has_not_happened(tmp_path):
    config = quick_config(data__source="torchvision", data__dir=str(tmp_path / "empty"))
    assert "to be downloaded into" in describe_source(config.data)


def test_a_train_config_file_takes_the_dotted_keys_specs_use(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim.lr: 0.01\ndata.augment: crop+flip\nmodel: {dropout: 0.2}\n")
    config = load_trial_config(path)
    assert config.optim.lr == 0.01 and config.data.augment == ("crop", "flip")
    assert config.model.dropout == 0.2


def test_the_report_says_what_really_ran(tmp_path):
    from cifartune.views.reports.tables import overview

    study = fabricate_study(tmp_path, {"name": "ran", **SPEC}, CURVES)
    table = overview(read_study(study)).set_index("property")["value"]
    assert "precision bf16" in table["what ran"]


def test_rows_of_an_older_file_missing_a_column_read_as_missing_not_as_true(tmp_path):
    # Epoch files of several versions read as one frame: a column one of them lacks is NaN in
    # its rows (pandas), None in a file written without it (pyarrow). Neither is a divergence,
    # nor an end time.
    from cifartune.store.summary import summarize_epochs
    from cifartune.store.tables import read_records, write_rows

    frame = pd.DataFrame({"epoch": [1, 2], "val/top1": [10.0, 20.0], "diverged": [None, None]})
    frame["diverged"] = frame["diverged"].astype(float)  # NaN, as a concatenation leaves it
    rows = frame.to_dict("records")
    summary = summarize_epochs(rows, "val/top1", "max", 2, "TERMINATED")
    assert summary["stop_reason"] == "completed" and summary["best_epoch"] == 2
    path = tmp_path / "e.parquet"
    write_rows([{"epoch": 1, "time/ended_at": 1.7e9}, {"epoch": 2, "time/ended_at": None}], path)
    ended = [row["time/ended_at"] for row in read_records(path)]
    assert ended[0].timestamp() == 1.7e9 and ended[1] is None
