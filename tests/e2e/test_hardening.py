"""Failure modes: malformed specs (fuzzed), concurrent and repeated runs, diverging and failing
trials, storage faults. Process-level modes use real processes and signals."""

import dataclasses
import errno
import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cifartune.cli.main import main
from cifartune.config.resolved import resolve
from cifartune.config.spec import trial_config
from cifartune.config.validation import build_spec
from cifartune.engine.data import describe_source, load_arrays
from cifartune.engine.splits import to_device
from cifartune.errors import DataError
from cifartune.storage import Location
from cifartune.store.epochs import epoch_path, read_study_epochs, write_epoch
from cifartune.store.study_data import read_study
from cifartune.store.tables import write_table

from ..support import TINY_BASE, run_cli, run_epochs, synthetic_arrays, write_mirror, write_spec

VALID = {
    "name": "fuzz",
    "base": {
        "epochs": 4,
        "batch_size": 64,
        "data": {"train_subset": 100, "normalize": "standardize"},
        "optim": {"name": "momentum", "lr": 0.05},
    },
    "space": {
        "optim.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
        "batch_size": [32, 64],
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
    "search": {"algorithm": "optuna", "samples": 4, "seed": 0},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus": 1, "gpus": 0},
    "checkpoint": {"every": 1},
    "retries": 1,
}
BAD_VALUES = [-1, 0, -0.5, 1e9, "", "nonsense", [], {}, None, True, [1, "x"], {"type": "float"}]


def _paths(tree, prefix=()):
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


def _mutate(rng):
    spec = yaml.safe_load(yaml.safe_dump(VALID))
    path = rng.choice(list(_paths(spec)))
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    kind = rng.choice(["delete", "swap", "value", "rename"])
    if kind == "delete" and path[-1] == "name" and len(path) == 1:
        kind = "value"
    if kind == "delete":
        del parent[path[-1]]
    elif kind == "rename":
        parent[path[-1] + "x"] = parent.pop(path[-1])
    elif kind == "swap":
        current = parent[path[-1]]
        parent[path[-1]] = [current] if not isinstance(current, list) else {"v": current}
    else:
        parent[path[-1]] = rng.choice(BAD_VALUES)
    return spec, kind, path


def test_fuzzed_specs_are_rejected_cleanly(tmp_path, capsys):
    assert main(["validate", str(_write(tmp_path / "ok.yaml", VALID))]) == 0
    rng = random.Random(20261126)
    rejected = 0
    for i in range(300):
        spec, kind, broken = _mutate(rng)
        change = f"{kind} {'.'.join(map(str, broken))}"
        capsys.readouterr()
        code = main(["validate", str(_write(tmp_path / f"s{i}.yaml", spec))])
        err = capsys.readouterr().err
        if code == 0:
            continue  # some mutations stay valid (deleting an optional key, a harmless value)
        rejected += 1
        assert code == 2, (change, err)
        assert "Traceback" not in err, change
        assert err.startswith("cifartune validate: error: "), (change, err)
        # The message names the key that was broken (or the section it sits in).
        named = str(broken[-1]) + ("x" if kind == "rename" else "")
        assert named in err or str(broken[0]) in err, (change, err)
    assert rejected > 150


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_leftover_temporary_files_are_skipped_by_readers(tmp_path):
    folder = tmp_path / "epochs" / "t1"
    for epoch in (1, 2):
        write_epoch({"epoch": epoch}, epoch_path(Location.of(folder), epoch, "ab"))
    (folder / ".00003-ab.parquet.x.tmp").write_bytes(b"PAR1 half a file")
    (folder / ".00003-ab.parquet").write_bytes(b"PAR1 half a file")
    assert read_study_epochs(Location.of(tmp_path))["epoch"].tolist() == [1, 2]


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"epoch": [1]}), target)

    def disk_full(fd):  # the bytes are written, then the disk fills before they are safe
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_table(pd.DataFrame({"epoch": [1, 2, 3]}), target)
    monkeypatch.undo()
    assert pd.read_parquet(target)["epoch"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def _mount_tmpfs(directory, size):
    directory.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.slow
def test_full_disk_stops_with_a_message_and_readable_files(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = disk / "run"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cifartune",
                "train",
                "--set",
                "epochs=20",
                "--set",
                "data.train_subset=100",
                "--set",
                "data.source=bundled",
                "--device",
                "cpu",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode != 0
        assert "Traceback" not in result.stderr and "No space left on device" in result.stderr
        epochs = sorted(run_epochs(out)["epoch"].tolist())
        assert epochs == list(range(1, len(epochs) + 1))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_finished_study_is_not_rerun_nor_mixed_with_another_spec(grid_study, tmp_path):
    # (A second driver for a running study is refused in test_resume's kill test.)
    spec = grid_study.parents[1] / "grid.yaml"
    storage = str(grid_study.parent)
    rows = len(read_study(grid_study).epochs)
    again = run_cli(["run", str(spec), "--storage", storage])
    assert again.returncode == 2 and "already holds this study, completed" in again.stderr
    resumed = run_cli(["run", str(spec), "--storage", storage, "--resume"])
    assert resumed.returncode == 0 and "already completed" in resumed.stdout
    assert len(read_study(grid_study).epochs) == rows
    # Another spec under the same name and storage is refused, not mixed in.
    other = write_spec(tmp_path, name="grid", base={**TINY_BASE, "epochs": 3})
    mixed = run_cli(["run", str(other), "--storage", storage])
    assert mixed.returncode == 2 and "made from another spec" in mixed.stderr
    assert "base.epochs: 2 there, 3 here" in mixed.stderr  # what differs, not two hashes


def _lopsided_mirror(directory):
    """A mirror of 210 training images whose class 9 has 12 (the others 22 each): the
    validation split of 100 takes 10 of every class and leaves class 9 with 2, so a
    stratified subset of 100 (10 a class) cannot be drawn though 110 images are left. Only
    the labels tell, and no check before the start reads them: the trial finds out."""
    arrays = synthetic_arrays(210, 100)
    labels = np.repeat(np.arange(10), [22] * 9 + [12])
    return write_mirror(directory, dataclasses.replace(arrays, train_labels=labels))


def _failing_trial_spec(tmp_path):
    # lr 50 diverges, the lopsided subset fails inside its trial; ASHA ranks the rest.
    data = {"source": "mirror", "dir": str(_lopsided_mirror(tmp_path / "mirror")), "val_size": 100}
    return dict(
        base={**TINY_BASE, "epochs": 4, "batch_size": 25, "data": data},
        variants={"ok": {}, "diverges": {"optim.lr": 50.0}, "fails": {"data.train_subset": 100}},
        scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2},
        retries=0,
    )


def test_the_failing_trial_passes_the_checks_and_fails_in_its_trial(tmp_path):
    # The premise of the next test, without Ray: every check before the start passes, and only
    # the "fails" variant's data setup raises, naming the field.
    spec = build_spec({"name": "tiny", **_failing_trial_spec(tmp_path)})
    resolved = resolve(spec)
    describe_source(resolved.base.data, also=resolved.data_probes)
    arrays = load_arrays(trial_config(spec, {}).data)
    for variant in ("ok", "diverges"):
        to_device(arrays, trial_config(spec, {"variant": variant}).data, torch.device("cpu"))
    failing = trial_config(spec, {"variant": "fails"}).data
    with pytest.raises(DataError, match=r"data\.train_subset=100 .*class 9, only 2 available"):
        to_device(arrays, failing, torch.device("cpu"))


@pytest.mark.slow
def test_diverging_and_failing_trials_do_not_stop_the_study(tmp_path):
    spec = write_spec(tmp_path, **_failing_trial_spec(tmp_path))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "cifartune", "run", str(spec), "--storage", str(tmp_path / "r")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "SystemExit" not in result.stderr
    study = read_study(tmp_path / "r" / "tiny")
    trials = study.trials.set_index("variant")
    assert trials.loc["diverges", "stop_reason"] == "diverged"
    assert trials.loc["diverges", "epochs_run"] >= 1
    assert trials.loc["fails", "stop_reason"] == "error"
    assert "train_subset=100" in trials.loc["fails", "error"]
    assert trials.loc["ok", "stop_reason"] in ("completed", "early-stopped")
    assert study.meta["state"] == "completed"
    # Checkpoint disk stays bounded: the latest and the best, per trial that trained.
    for variant in ("ok", "diverges"):
        folder = tmp_path / "r" / "tiny" / "checkpoints" / trials.loc[variant, "trial_id"]
        assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "latest.pt"]
