"""The trial summaries every reader recomputes: for all trials at once (read_study) exactly what
the driver computes for one trial from its rows (the recorder)."""

import math

import pandas as pd
import pytest

from cifartune.store.summary import resummarize, summarize_epochs

NAN = math.nan
# trial -> (Ray's state, planned epochs, its epoch rows: val/top1, val/loss, cpu_s, diverged)
TRIALS = {
    "a": ("TERMINATED", 3, [(40.0, 2.0, 1.0, False), (50.0, 1.5, 1.0, False),
                            (50.0, 1.4, 1.0, False)]),  # two best epochs: the first counts
    "b": ("TERMINATED", 3, [(30.0, 2.1, NAN, False)]),  # early-stopped, CPU time unmeasured
    "c": ("RUNNING", 2, [(20.0, 2.2, 1.0, False), (25.0, 2.0, 1.0, False)]),  # table lags
    "d": ("ERROR", 3, [(NAN, NAN, 1.0, False)]),
    "e": ("TERMINATED", 3, [(10.0, 2.3, 1.0, False), (NAN, NAN, 1.0, True)]),  # diverged
    "f": ("PENDING", 3, []),
    "g": ("STOPPED", 3, [(35.0, 1.9, 1.0, False)]),  # by the budget
}  # fmt: skip


def frames():
    epochs, trials = [], []
    for trial, (state, planned, rows) in TRIALS.items():
        trials.append({"trial_id": trial, "state": state, "max_epochs": planned, "gpu_s": 0.0})
        for epoch, (top1, loss, cpu, diverged) in enumerate(rows, start=1):
            epochs.append({"trial_id": trial, "epoch": epoch, "val/top1": top1, "val/loss": loss,
                           "train/top1": top1 + 1, "time/epoch_s": 2.0, "time/cpu_s": cpu,
                           "diverged": diverged})  # fmt: skip
    return pd.DataFrame(trials), pd.DataFrame(epochs)


@pytest.mark.parametrize(("metric", "mode"), [("val/top1", "max"), ("val/loss", "min")])
def test_every_trial_summary_matches_the_one_trial_summary(metric, mode):
    trials, epochs = frames()
    got = resummarize(trials, epochs, metric, mode, 2.0, 1.0).set_index("trial_id")
    assert "gpu_s" not in got
    for trial, (state, planned, _) in TRIALS.items():
        rows = epochs[epochs["trial_id"] == trial].to_dict("records")
        want = summarize_epochs(rows, metric, mode, planned, state)
        for key, value in want.items():
            mine = got.loc[trial, key]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert mine is None or (isinstance(mine, float) and math.isnan(mine)), (trial, key)
            else:
                assert mine == pytest.approx(value), (trial, key)
        assert got.loc[trial, "reserved_cpu_s"] == pytest.approx(2.0 * want["time_s"])
        assert got.loc[trial, "reserved_gpu_s"] == pytest.approx(want["time_s"])
