"""Where a study's files live in its results directory (a local path or an object-store prefix):

study.json               metadata: spec hash, versions, hardware, start/end, state
spec.yaml                the resolved spec
epochs/<trial>.parquet   one row per finished epoch of that trial (written by the trial)
checkpoints/<trial>/     latest.pt and best.pt of that trial (written by the trial)
finished/<trial>         an empty file per trial Ray reported complete (written by the driver)
trials.parquet           one row per trial: config, state, stop reason, best epoch, compute
test.parquet             test-set scores of the best configurations, after the search
ray/                     Ray Tune's experiment state (trial list, searcher, scheduler)
orphaned/                files of trials a resumed study no longer knows
"""

from __future__ import annotations

from cifartune.storage import Location

STUDY_FILE = "study.json"
SPEC_FILE = "spec.yaml"
EPOCHS_DIR = "epochs"
TRIALS_FILE = "trials.parquet"
TEST_FILE = "test.parquet"
RAY_DIR = "ray"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"
FAILED = "failed.txt"
FINISHED_DIR = "finished"
ORPHANED_DIR = "orphaned"


def epochs_path(directory: Location, trial_id: str) -> Location:
    return directory / EPOCHS_DIR / f"{trial_id}.parquet"


def checkpoint_dir(directory: Location, trial_id: str) -> Location:
    return directory / CHECKPOINTS_DIR / trial_id
