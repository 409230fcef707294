"""The driver's trial table: work per event independent of the study's size, each change of a
trial's state written at once as a file of its own, epoch progress read from the epoch files
(each read once), failures read back from the trial's files."""

from types import SimpleNamespace

import pytest

from cifartune.config.base import flatten
from cifartune.config.resolved import resolve
from cifartune.config.spec import trial_config
from cifartune.config.validation import build_spec
from cifartune.storage import Location
from cifartune.store.checkpoints import record_failure
from cifartune.store.columns import epoch_records, trial_keys
from cifartune.store.epochs import epoch_files, epoch_path, trial_epochs_dir, write_epoch
from cifartune.store.study_data import read_study
from cifartune.store.trial_states import read_trial_rows
from cifartune.study.recorder import StudyRecorder, TrialEvent

from ..support import TINY_BASE

SPEC = build_spec(
    {
        "name": "rec",
        "base": TINY_BASE,
        "space": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.1}},
        "search": {"algorithm": "random", "samples": 4},
    }
)


def _sample(i):
    return {"optim.lr": 0.001 + i * 1e-5}


def _write_epochs(directory, trial_id, epochs):
    """The trial's epoch files up to `epochs`, as its process writes them (one per epoch)."""
    sample = _sample(int(trial_id.removeprefix("t")))
    flat = flatten(trial_config(SPEC, sample))
    folder = trial_epochs_dir(Location.of(directory), trial_id)
    done = epoch_files(folder)
    history = [
        {"epoch": e, "val/top1": 10.0 + e, "val/loss": 2.0, "train/top1": 10.0,
         "time/epoch_s": 1.0, "time/ended_at": 1e9 + e}
        for e in range(1, epochs + 1) if e not in done
    ]  # fmt: skip
    keys = trial_keys(trial_id, flat, sample, study="rec")
    for row in epoch_records(history, flat, **keys):
        write_epoch(row, epoch_path(folder, row["epoch"], "ab"))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _recorder(directory, clock):
    def resolve(sample):
        resolve.calls += 1
        return flatten(trial_config(SPEC, sample))

    resolve.calls = 0
    recorder = StudyRecorder(directory, resolve, "val/top1", "max", 1, 0, clock=clock)
    return recorder, resolve


def _events(n, states=None):
    states = states or {}
    return [TrialEvent(f"t{i}", states.get(f"t{i}", "RUNNING"), _sample(i)) for i in range(n)]


def _one_event_costs(tmp_path, n):
    """Files read, configs resolved, rows rebuilt and trial rows written for one epoch event in
    a study of `n` running trials."""
    directory = tmp_path / f"n{n}"
    for i in range(n):
        _write_epochs(directory, f"t{i}", 1)
    clock = Clock()
    recorder, resolve = _recorder(directory, clock)
    recorder.record_events(_events(n))  # every trial starts: a row file each
    assert recorder.writes == n and len(read_trial_rows(Location.of(directory))) == n
    reads, resolved, writes = recorder.reads, resolve.calls, recorder.writes
    _write_epochs(directory, "t0", 2)
    events = [
        e
        for e in _events(n)
        if e.trial_id == "t0" or recorder.needs_update(e.trial_id, e.ray_state)
    ]
    changed = recorder.record_events(events, touched="t0")
    return (len(events), len(changed), recorder.reads - reads, resolve.calls - resolved,
            recorder.writes - writes)  # fmt: skip


def test_work_per_event_does_not_grow_with_the_trial_count(tmp_path):
    small, large = _one_event_costs(tmp_path, 3), _one_event_costs(tmp_path, 80)
    assert small == large == (1, 1, 1, 0, 0)  # one trial re-summarized, one file read, no write


def test_a_state_change_is_written_at_once_and_progress_is_read_from_the_epoch_files(tmp_path):
    clock = Clock()
    _write_epochs(tmp_path, "t0", 1)
    _write_epochs(tmp_path, "t1", 1)
    recorder, _ = _recorder(tmp_path, clock)
    recorder.record_events(_events(2))
    assert recorder.writes == 2  # both trials start running: a row file each
    _write_epochs(tmp_path, "t0", 2)
    recorder.record_events(_events(2), touched="t0")
    assert recorder.writes == 2  # an epoch is no change of state: nothing written
    recorder.record_complete("t1")
    recorder.record_events(_events(2, {"t1": "TERMINATED"}), touched="t1")
    assert recorder.writes == 3  # t1 finished: its new row, at once
    table = read_trial_rows(Location.of(tmp_path)).set_index("trial_id")
    assert table.loc["t1", "state"] == "TERMINATED" and table.loc["t1", "seq"] == 2
    assert table.loc["t0", "epochs_run"] == 1  # the row as of t0's last change of state ...
    # ... but a reader sees the progress (summaries come from the epoch files, the truth),
    (tmp_path / "study.json").write_text('{"name": "rec", "state": "running"}')
    assert read_study(tmp_path).trials.set_index("trial_id").loc["t0", "epochs_run"] == 2
    # ... and a resumed driver knows t1 finished (its marker), not interrupted, and numbers
    # its next rows after the ones written.
    resumed, _ = _recorder(tmp_path, Clock())
    rows = {r["trial_id"]: r for r in resumed.record_events(_events(2, {"t1": "TERMINATED"}))}
    assert rows["t1"]["state"] == "TERMINATED" and rows["t1"]["stop_reason"] == "early-stopped"
    assert read_trial_rows(Location.of(tmp_path)).set_index("trial_id").loc["t0", "seq"] == 2


def test_a_trial_that_failed_for_good_is_an_error_after_a_restart_too(tmp_path):
    record_failure(Location.of(tmp_path), "t0", "DataError: asked for 30 images of class 9")
    recorder, _ = _recorder(tmp_path, Clock())
    stopped = {"t0": "TERMINATED", "t1": "TERMINATED"}
    rows = {r["trial_id"]: r for r in recorder.record_events(_events(2, stopped))}
    assert rows["t0"]["state"] == "ERROR" and rows["t0"]["stop_reason"] == "error"
    assert rows["t0"]["error"].startswith("DataError: asked for 30")
    assert rows["t1"]["state"] == "INTERRUPTED"  # stopped by an interrupt, resumed later
    # A new driver (a resume) reads the same from the files.
    again, _ = _recorder(tmp_path, Clock())
    rows = {r["trial_id"]: r for r in again.record_events(_events(2, stopped))}
    assert rows["t0"]["state"] == "ERROR" and rows["t1"]["state"] == "INTERRUPTED"


@pytest.mark.parametrize("n", [3, 60])
def test_the_callback_mirrors_only_the_trial_an_event_is_about(tmp_path, n):
    from cifartune.study.callback import StudyCallback

    for i in range(n):
        _write_epochs(tmp_path, f"t{i}", 1)
    callback = StudyCallback(Location.of(tmp_path), resolve(SPEC))
    callback.setup()
    updates = []
    update = callback.mirror.update
    callback.mirror.update = lambda row, epochs: (
        updates.append(row["trial_id"]),
        update(row, epochs),
    )
    trials = [
        SimpleNamespace(trial_id=f"t{i}", status="RUNNING", config=_sample(i), error_file=None)
        for i in range(n)
    ]
    callback._sync(trials)
    assert len(updates) == n  # every trial appears once
    updates.clear()
    looked_at = []  # the trials whose Ray state the event looks at
    needs_update = callback.recorder.needs_update
    callback.recorder.needs_update = lambda trial_id, state: (
        looked_at.append(trial_id) or needs_update(trial_id, state)
    )
    _write_epochs(tmp_path, "t1", 2)
    callback.on_trial_result(0, trials, trials[1], {"epoch": 2, "val/top1": 12.0, "val/loss": 2.0,
                                                    "time/epoch_s": 1.0})  # fmt: skip
    assert updates == []  # within the table's write interval: the mirror follows it
    assert looked_at == []  # nor does an event look at every trial's state (n of them)
    callback.on_experiment_end(trials)
    assert updates == ["t1"]
    study = callback.mirror.study
    mirrored = {t.user_attrs["trial_id"]: t for t in study.get_trials()}
    assert mirrored["t1"].intermediate_values == {1: 11.0, 2: 12.0}
