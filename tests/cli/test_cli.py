import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from cifartune.cli.main import build_parser, main

from ..support import REPO, run_cli, run_epochs, start_cli, stopped_at_exit, wait_for


def test_help_of_every_command(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"train", "run", "resume", "status", "report", "validate"} <= set(commands)
    for args in [["--help"], *([name, "--help"] for name in commands)]:
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0
        usage = f"usage: cifartune {args[0] if len(args) > 1 else ''}".strip()
        assert usage in capsys.readouterr().out
    assert run_cli(["--help"]).returncode == 0  # and as a real process


def test_debug_shows_the_traceback_that_is_hidden_by_default(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: s\nrepeats: many\n")
    quiet = run_cli(["validate", str(spec)])
    loud = run_cli(["--debug", "validate", str(spec)])
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr


def test_inspect_prints_the_seed_table():
    result = run_cli(["inspect"])
    assert result.returncode == 0
    for number in ("2,432", "51,264", "102,464", "1,025,000", "10,010", "1,191,170"):
        assert number in result.stdout
    assert "14x14" in result.stdout  # conv2's receptive field


def test_train_writes_metrics_config_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        [
            "train",
            "--set",
            "epochs=2",
            "--set",
            "data.train_subset=100",
            "--set",
            "data.augment=crop+flip",
            "--set",
            "data.source=bundled",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "epoch   2" in result.stdout and f"results in {out}" in result.stdout
    frame = run_epochs(out)
    assert frame["epoch"].tolist() == [1, 2]
    assert frame["config/data.augment"].iloc[0] == "crop+flip"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["data"]["augment"] == "crop+flip"
    assert (out / "checkpoint.pt").is_file()
    # The same --out again without --resume is refused rather than overwritten.
    again = run_cli(["train", "--set", "epochs=2", "--out", str(out)])
    assert again.returncode == 2 and "--resume" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "optim.lr=-1"], "optim.lr = -1"),
        (["train", "--set", "optim.lrr=0.1"], "did you mean 'lr'"),
        (["train", "--set", "batch_size=big"], "batch_size = 'big'"),
        (["train", "--config", "missing.yaml"], "missing.yaml: no such file"),
        (
            ["train", "--set", "data.dir=/nonexistent/cifar", "--set", "data.source=mirror"],
            "/nonexistent/cifar: not a directory",
        ),
        (["inspect", "--set", "model.dropout=2"], "model.dropout = 2"),
        (["train", "--trial", "t_1"], "--trial: names a trial of --replay RESULTS"),
        (["train", "--replay", "r", "--set", "epochs=2"], "drop --config and --set"),
        (["train", "--replay", "/nonexistent/study"], "/nonexistent/study: no such directory"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message_and_no_traceback(
    tmp_path, args, message, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code = main([*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "epochs").exists()


def test_ctrl_c_keeps_finished_epochs_and_resume_completes_the_run(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--set",
        "epochs=6",
        "--set",
        "data.train_subset=300",
        "--set",
        "data.source=bundled",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    with stopped_at_exit(start_cli(args, cwd=REPO)) as process:
        wait_for(lambda: len(run_epochs(out)) >= 2, timeout=120)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "cifartune train --resume" in stderr and "Traceback" not in stderr
    before = run_epochs(out)
    done = before["epoch"].tolist()
    assert 2 <= len(done) < 6 and done == list(range(1, len(done) + 1))

    result = run_cli(["train", "--resume", "--out", str(out)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    after = run_epochs(out)
    assert after["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    # It continued: the finished epochs are the same rows (timings included), not re-trained.
    kept = after.iloc[: len(before)]
    pd.testing.assert_frame_equal(kept[before.columns], before)


BAD_SPECS = [
    ("nmae: x\n", "did you mean 'name'"),
    ("name: s\nrepeats: many\n", "repeats = 'many'"),
    ("name: s\nspace:\n  optim.lr: []\n", "space.optim.lr"),
    ("name: s\nspace:\n  optim.lr: [0.1, 0]\n", "optim.lr = 0"),
    ("name: s\nspace:\n  batch_size: [0]\n", "batch_size = 0"),
    ("name: s\nresources: {gpus: 1.5}\n", "resources.gpus"),
    ("name: s\nresources: {gpus: -1}\n", "resources.gpus"),
    ("name: s\nbase: {optim: {name: sgdd}}\n", "base.optim.name = 'sgdd'"),
    ("name: s\nscheduler: {name: hyperband}\n", "scheduler.name = 'hyperband'"),
    ("name: s\nsearch: {algorithm: bayes}\n", "search.algorithm = 'bayes'"),
    ("name: s\nbase: {epochs: 3}\nscheduler: {name: asha, grace_period: 4}\n", "grace_period = 4"),
    ("name: s\nmetric: val/f1\n", "metric = 'val/f1'"),
    ("name: s\nbase:\n  optim: {lr: [0.1\n", "line 4, column 1: YAML syntax error"),
    ("", "is empty"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_bad_spec_exits_2_naming_the_field(tmp_path, text, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    for command in (["validate", str(path)], ["run", str(path), "--storage", str(tmp_path / "r")]):
        code = main(command)
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing started, nothing written


def test_unwritable_storage_is_refused_before_ray_starts(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli(["run", str(REPO / "studies" / "smoke.yaml"), "--storage", str(blocker / "x")])
    assert result.returncode == 2
    assert "storage: cannot write results to" in result.stderr and "Traceback" not in result.stderr


def test_the_readmes_first_train_command_learns(tmp_path):
    # The tour's first command, as a newcomer pastes it (only --out moved to a temp dir): its
    # best validation top-1 is well above chance (10%), not a diverged run.
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    (command,) = [line for line in text.splitlines() if "cifartune train --set" in line]
    args = command.split("cifartune ", 1)[1].split()
    args[args.index("--out") + 1] = str(tmp_path / "first")
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(run_epochs(tmp_path / "first")["val/top1"].max()) > 25.0


def test_a_dry_run_that_no_trial_could_start_here_exits_2_saying_why(capsys):
    spec = str(REPO / "studies" / "smoke.yaml")
    # 1,024 CPUs a trial: more than any machine the suite runs on.
    assert main(["run", spec, "--dry-run", "--set", "resources.cpus=1024"]) == 2
    captured = capsys.readouterr()
    assert "0 trial(s) at once (limited by CPUs)" in captured.out  # the plan is still shown
    assert "each trial needs 1024 CPUs, which this machine does not have" in captured.err
    assert main(["run", spec, "--dry-run"]) == 0


def test_resume_help_names_every_key_a_resume_may_set(capsys):
    with pytest.raises(SystemExit):
        main(["resume", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in ("base.data.dir", "base.data.download", "budget.wall", "budget.gpu_hours",
                "budget.cpu_hours", "budget.target"):  # fmt: skip
        assert key in text, key


def test_train_imports_no_ray_optuna_or_study_driver(tmp_path):
    # What `cifartune train` loads, seen from inside its process: the Ray-free path stays so.
    code = (
        "import sys; from cifartune.cli.main import main; "
        f"code = main(['train', '--set', 'epochs=1', '--set', 'data.source=bundled', "
        f"'--set', 'data.train_subset=100', '--out', {str(tmp_path / 'o')!r}]); "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}); "
        "driver = [m for m in sys.modules if m.startswith('cifartune.study.')]; "
        "print('LOADED', code, loaded, driver)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED 0 [] []" in result.stdout


@pytest.mark.parametrize("command", ["export-optuna", "dashboard"])
def test_storage_means_the_results_root_everywhere(tmp_path, capsys, command):
    # An Optuna storage is --optuna-storage, for run and resume as for these two.
    with pytest.raises(SystemExit) as done:
        main([command, str(tmp_path), "--storage", "sqlite:///x.db"])
    assert done.value.code == 2
    assert (
        "--storage is where a study's results go (run, submit); an Optuna storage is "
        "--optuna-storage URL" in capsys.readouterr().err
    )


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `cifartune inspect | head -1`, made certain: the pipe's read end is closed before the
    # command writes anything.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "cifartune", "inspect"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr[-2000:]
