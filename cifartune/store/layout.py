"""Where a study's files live in its results directory (a local path or an object-store
prefix). What a reader may see of each, and when, is in docs/results.md.

  study.json                      state, host, heartbeat, versions (replaced whole)
  spec.yaml                       the resolved spec (replaced whole, the same each time)
  epochs/<trial>/<e>-<w>.parquet  one row per finished epoch, written once by the trial
  trials/<trial>/<seq>.parquet    the trial at each change of state, written once by the driver
  lineage/<trial>/<e>-<w>.parquet each exploit of a PBT trial, written once by the trial
  tables/epochs, tables/trials    finished trials' rows as Delta tables, committed by the driver
  test.parquet                    test-set scores of the best configurations, written once
  budget.json                     the budget's limit the study reached, written once
  checkpoints/<trial>/            latest.pt, best.pt, failed.txt: the trial's own, for resume
  finished/<trial>                an empty file per trial Ray reported complete
  optuna.journal                  the study's Optuna mirror (Optuna's append-only journal)
  ray/                            Ray Tune's experiment state (trial list, searcher, scheduler)
  withdrawn/                      epoch rows a resume withdrew; an older layout's files
  orphaned/                       files of trials a resumed study no longer knows
"""

from __future__ import annotations

from cifartune.storage import Location

STUDY_FILE = "study.json"
SPEC_FILE = "spec.yaml"
EPOCHS_DIR = "epochs"
TRIALS_FILE = "trials.parquet"  # an older version's trial table, replaced whole
TEST_FILE = "test.parquet"
RAY_DIR = "ray"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"
FAILED = "failed.txt"
FINISHED_DIR = "finished"
ORPHANED_DIR = "orphaned"
WITHDRAWN_DIR = "withdrawn"
TRIALS_DIR = "trials"
BUDGET_FILE = "budget.json"
LINEAGE_DIR = "lineage"
TABLES_DIR = "tables"


def checkpoint_dir(directory: Location, trial_id: str) -> Location:
    return directory / CHECKPOINTS_DIR / trial_id
