"""Tiny study specs for the Ray tests (bundled data, CPU, seconds per trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# Where the Ray tests import them from.
from .helpers import session_processes, start_cli  # noqa: F401

TINY_BASE = {
    "epochs": 2,
    "batch_size": 50,
    "data": {"source": "bundled", "train_subset": 100, "val_size": 100},
}


def write_spec(directory: Path, **fields: Any) -> Path:
    spec = {"name": "tiny", "base": TINY_BASE, "resources": {"cpus": 1}, **fields}
    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def epochs_of(results: Path) -> pd.DataFrame:
    from cifartune.store.study_data import read_study

    return read_study(results).epochs


def start_study(spec: Path, cwd: Path, *args: str) -> Any:
    """`cifartune run SPEC --storage CWD/r` as a real background process in a session of its own
    (so a test can signal or kill it with every process it started: helpers.stop_session)."""
    return start_cli(["run", str(spec), "--storage", str(cwd / "r"), *args], cwd)


def wait_for(predicate: Any, timeout: float = 240) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def epochs_so_far(results: Path) -> pd.DataFrame:
    """The epochs a running study has written, or an empty frame before it has any."""
    from cifartune.store.study_data import read_study

    try:
        return read_study(results).epochs
    except Exception:
        return pd.DataFrame()


DETERMINISTIC = ["epoch", "train/loss", "train/top1", "val/loss", "val/top1", "val/top5", "lr"]


def fabricate_study(
    directory: Path,
    spec_tree: dict[str, Any],
    curves: dict[str, Any],
    state: str = "completed",
    test_scores: dict[str, float] | None = None,
) -> Path:
    """A study results directory written by the study code (spec loader + StudyRecorder) from
    made-up epoch metrics instead of Ray: `curves` maps a trial id to (sample, [val_top1 per
    epoch], final state, diverged flag)."""
    import json
    import math

    from cifartune.config.base import flatten
    from cifartune.config.resolved import resolve
    from cifartune.config.spec import build_spec, spec_hash, trial_config
    from cifartune.store.columns import epoch_records, trial_keys
    from cifartune.store.tables import write_records, write_table
    from cifartune.study.recorder import StudyRecorder, TrialEvent

    def resolve_flat(spec, sample):
        return flatten(trial_config(spec, sample))

    spec = build_spec(spec_tree)
    study_dir = directory / spec.name
    study_dir.mkdir(parents=True)
    (study_dir / "spec.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    (study_dir / "study.json").write_text(
        json.dumps(
            {
                "name": spec.name,
                "spec_hash": spec_hash(spec),
                "state": state,
                "started": "2026-01-01T00:00:00+00:00",
                "versions": {"torch": "x"},
                "hardware": {"host": "test", "cpus": 2, "gpus": []},
            }
        )
    )
    recorder = StudyRecorder(
        study_dir,
        lambda s: resolve_flat(spec, s),
        spec.metric,
        resolve(spec).mode,
        spec.resources.cpus,
        spec.resources.gpus,
    )
    events = []
    for trial_id, (sample, val_top1, final_state, diverged) in curves.items():
        history = []
        for epoch, top1 in enumerate(val_top1, start=1):
            last = epoch == len(val_top1)
            loss = 2.3 - 0.08 * epoch + (0.02 * epoch**1.5 if top1 < 60 else 0)
            history.append(
                {
                    "epoch": epoch,
                    "lr": 0.1,
                    "train/loss": 2.3 - 0.1 * epoch,
                    "train/top1": min(99.0, top1 + 2 * epoch),
                    "train/top5": 90.0,
                    "val/loss": math.nan if (diverged and last) else loss,
                    "val/top1": top1,
                    "val/top5": 90.0,
                    "time/train_s": 1.0 + 8 / sample.get("batch_size", 128),
                    "time/epoch_s": 1.2 + 8 / sample.get("batch_size", 128),
                    "time/images_per_s": 100.0 * sample.get("batch_size", 128) ** 0.5,
                    "diverged": diverged and last,
                    "init/loss": 2.30,
                    "init/top1": 10.0,
                    "init/top5": 50.0,
                    "node_id": "n1",
                    "pid": 1,
                    "time/ended_at": 1.767e9 + 60 * epoch,  # Unix seconds, as time.time()
                    "effective/precision": "bf16",  # what precision auto picked
                }
            )
        flat = resolve_flat(spec, sample)
        rows = epoch_records(history, flat, **trial_keys(trial_id, flat, sample, study=spec.name))
        write_records(rows, study_dir / "epochs" / f"{trial_id}.parquet")
        if final_state == "TERMINATED":
            recorder.record_complete(trial_id)
        events.append(TrialEvent(trial_id, final_state, sample))
    recorder.record_events(events)
    if test_scores:
        trials = recorder.trial_table()
        rows = [
            {
                "rank": 1,
                "group": trials.set_index("trial_id").loc[t, "group"],
                "trial_id": t,
                "seed": 0,
                "variant": "",
                "epoch": 1,
                "test/loss": 1.0,
                "test/top1": v,
                "test/top5": 95.0,
            }
            for t, v in test_scores.items()
        ]
        write_table(pd.DataFrame(rows), study_dir / "test.parquet")
    return study_dir
