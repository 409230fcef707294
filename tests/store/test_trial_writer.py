"""A trial's own files (``cifartune.store.trial_writer``), driven without Ray or training: made-up
epoch metrics and a fake checkpoint thunk. What the README promises of them: ``latest.pt`` every
``checkpoint.every`` epochs and at the last, ``best.pt`` at the best epoch by the study metric
in its direction, one row per finished epoch, and a resume that makes the rows agree with the
checkpoint (the crash window between a checkpoint and its row loses and duplicates nothing)."""

import math

import pandas as pd
import pytest
import torch

from cifartune.config.base import flatten
from cifartune.config.resolved import resolve
from cifartune.config.validation import build_spec
from cifartune.storage import Location
from cifartune.store import trial_writer
from cifartune.store.checkpoints import better, load_state, save_state
from cifartune.store.columns import trial_keys
from cifartune.store.epochs import EpochReader, epoch_files, trial_epochs_dir, withdrawn_dir
from cifartune.store.layout import BEST, LATEST, checkpoint_dir
from cifartune.store.trial_writer import TrialWriter

from ..support import quick_config

SAMPLE = {"optim.lr": 0.05}


def writer(
    tmp_path, *, epochs=5, every=1, metric="val/top1", mode="max", sample=SAMPLE, pid=123,
    stops_at=None,
):  # fmt: skip
    """A TrialWriter for trial t_1 of a study in `tmp_path`, as the trainable builds it."""
    flat = flatten(quick_config(epochs=epochs, optim__lr=0.05))
    return TrialWriter(
        Location.of(tmp_path),
        "t_1",
        sample=sample,
        flat_config=flat,
        keys=trial_keys("t_1", flat, sample, study="s"),
        metric=metric,
        mode=mode,
        every=every,
        extras={"node_id": "n1", "pid": pid},
        stops_at=stops_at,
    )


def metrics(epoch, top1=None, loss=None, diverged=False):
    top1 = 10.0 + epoch if top1 is None else top1
    loss = 2.3 - 0.1 * epoch if loss is None else loss
    return {
        "epoch": epoch,
        "lr": 0.05,
        "train/loss": loss + 0.1,
        "val/loss": loss,
        "val/top1": top1,
        "diverged": diverged,
    }


def train(w, history, epochs):
    """Report `epochs` (metric dicts) to `w` as engine.fit does: the thunk builds the checkpoint
    of the epoch just finished (its model is a tensor holding that epoch's number)."""
    for m in epochs:
        history.append(m)
        w.record(m, lambda m=m: state_after(history, m["epoch"]))


def state_after(history, epoch):
    return {
        "epoch": epoch,
        "history": [dict(h) for h in history if h["epoch"] <= epoch],
        "model": {"weight": torch.tensor([float(epoch)])},
        "precision": "bf16",
    }


def latest(tmp_path):
    path = checkpoint_dir(Location.of(tmp_path), "t_1") / LATEST
    return load_state(path) if path.is_file() else None


def best(tmp_path):
    return load_state(checkpoint_dir(Location.of(tmp_path), "t_1") / BEST)


def rows(tmp_path):
    """The trial's epoch rows as a reader sees them now (each epoch's file read once)."""
    folder = trial_epochs_dir(Location.of(tmp_path), "t_1")
    return pd.DataFrame(EpochReader().rows(folder))


def withdrawn(tmp_path):
    return sorted(f.name for f in withdrawn_dir(Location.of(tmp_path), "t_1").files())


def test_latest_is_written_every_n_epochs_and_at_the_last_one(tmp_path):
    # epochs 5, every 2: due at 2 and 4 and, although 2 does not divide 5, at the last epoch.
    w = writer(tmp_path, epochs=5, every=2)
    history, seen = [], {}
    for epoch in range(1, 6):
        train(w, history, [metrics(epoch)])
        state = latest(tmp_path)
        seen[epoch] = None if state is None else state["epoch"]
    assert seen == {1: None, 2: 2, 3: 2, 4: 4, 5: 5}
    final = latest(tmp_path)
    assert [m["epoch"] for m in final["history"]] == [1, 2, 3, 4, 5]
    assert final["model"]["weight"].item() == 5.0 and final["sample"] == SAMPLE


def test_a_diverged_epoch_is_the_last_and_gets_a_latest_checkpoint(tmp_path):
    # Resuming a diverged trial must find it diverged, not retrain from the epoch before.
    w = writer(tmp_path, epochs=5, every=2)
    train(w, [], [metrics(1), metrics(2), metrics(3, loss=math.nan, diverged=True)])
    assert latest(tmp_path)["epoch"] == 3


def test_one_row_per_finished_epoch_with_the_documented_columns(tmp_path):
    w = writer(tmp_path, epochs=3, every=2)
    train(w, [], [metrics(1), metrics(2), metrics(3)])
    frame = rows(tmp_path)
    assert frame["epoch"].tolist() == [1, 2, 3]
    identity = ["trial_id", "group", "variant", "seed", "time/ended_at", "pid", "node_id"]
    assert set(identity) <= set(frame.columns)
    assert set(frame["trial_id"]) == {"t_1"} and set(frame["pid"]) == {123}
    assert frame["config/epochs"].tolist() == [3, 3, 3]
    assert frame["config/optim.lr"].tolist() == [0.05] * 3
    assert frame["val/top1"].tolist() == [11.0, 12.0, 13.0]


class Killed(Exception):
    """The trial process dying at that point."""


def test_resume_writes_the_rows_a_crash_after_the_checkpoint_left_out(tmp_path, monkeypatch):
    w = writer(tmp_path, epochs=5, every=1)
    history = []
    train(w, history, [metrics(1), metrics(2)])
    before = rows(tmp_path)

    # Epoch 3: its checkpoint is written, then the process dies before its row is.
    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(trial_writer, "write_epoch", killed)
    with pytest.raises(Killed):
        train(w, history, [metrics(3, top1=40.0)])
    monkeypatch.undo()
    assert latest(tmp_path)["epoch"] == 3 and rows(tmp_path)["epoch"].tolist() == [1, 2]

    # The retried trial (a new process: a new writer) resumes from the checkpoint.
    state = writer(tmp_path, epochs=5, every=1, pid=456).resume()
    assert state is not None and state["epoch"] == 3
    after = rows(tmp_path)
    assert after["epoch"].tolist() == [1, 2, 3]  # each epoch exactly once
    assert after.iloc[2]["val/top1"] == 40.0  # row 3 from the checkpoint's history
    # ... the row the dead process would have written: its pid, node and end time.
    assert after.iloc[2]["pid"] == 123 and after.iloc[2]["node_id"] == "n1"
    assert after.iloc[2]["time/ended_at"] >= before["time/ended_at"].max()
    # The rows written before the crash are kept as they were, timestamps included.
    pd.testing.assert_frame_equal(after.iloc[:2][before.columns], before)


def test_resume_drops_rows_beyond_the_checkpoint(tmp_path):
    # every 2: epoch 3 has a row but no checkpoint; the resumed trial retrains it.
    w = writer(tmp_path, epochs=5, every=2)
    history = []
    train(w, history, [metrics(1), metrics(2), metrics(3)])
    assert rows(tmp_path)["epoch"].tolist() == [1, 2, 3]
    stale = epoch_files(trial_epochs_dir(Location.of(tmp_path), "t_1"))[3].name
    again = writer(tmp_path, epochs=5, every=2)
    state = again.resume()
    assert state["epoch"] == 2
    assert rows(tmp_path)["epoch"].tolist() == [1, 2]
    assert withdrawn(tmp_path) == [stale]  # kept, out of the results
    # Retraining epoch 3 stores it once, with the new numbers, in a file of another name.
    train(again, history[:2], [metrics(3, top1=50.0)])
    assert rows(tmp_path)["epoch"].tolist() == [1, 2, 3]
    assert rows(tmp_path).iloc[2]["val/top1"] == 50.0
    assert stale not in {
        f.name for f in epoch_files(trial_epochs_dir(Location.of(tmp_path), "t_1")).values()
    }


def test_resume_keeps_the_stored_rows_a_checkpoint_cannot_rebuild(tmp_path):
    # A checkpoint of an older version holds no `ran` (pid, node, end time per epoch): only
    # the epoch file still has them, and a resume must keep them, not rebuild the rows bare.
    w = writer(tmp_path, epochs=5, every=1)
    train(w, [], [metrics(1), metrics(2)])
    before = rows(tmp_path)
    path = checkpoint_dir(Location.of(tmp_path), "t_1") / LATEST
    old = load_state(path)
    del old["ran"]
    save_state(old, path)
    assert writer(tmp_path, epochs=5, every=1, pid=456).resume()["epoch"] == 2
    after = rows(tmp_path)
    assert after["pid"].tolist() == [123, 123]
    pd.testing.assert_frame_equal(after[before.columns], before)


def test_resume_keeps_the_best_so_far_from_the_checkpoint(tmp_path):
    w = writer(tmp_path, epochs=4, every=1)
    history = []
    train(w, history, [metrics(1, top1=30.0), metrics(2, top1=20.0)])
    again = writer(tmp_path, epochs=4, every=1)
    again.resume()
    train(again, history, [metrics(3, top1=25.0)])  # better than epoch 2, not than epoch 1
    assert best(tmp_path)["epoch"] == 1 and best(tmp_path)["metric"] == 30.0


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    train(writer(tmp_path, epochs=3), [], [metrics(1), metrics(2)])
    other = writer(tmp_path, epochs=3, sample={"optim.lr": 0.01})
    assert other.resume() is None
    assert latest(tmp_path) is None
    assert not epoch_files(trial_epochs_dir(Location.of(tmp_path), "t_1"))
    assert len(withdrawn(tmp_path)) == 2  # the other configuration's rows, kept aside


def test_a_trial_without_files_starts_from_scratch(tmp_path):
    assert writer(tmp_path).resume() is None


@pytest.mark.parametrize(
    ("metric", "curve", "best_epoch"),
    [
        # Accuracy: the maximum (epoch 4), not the minimum (epoch 1).
        ("val/top1", [10.0, 30.0, 20.0, 40.0, 35.0], 4),
        # Loss: the minimum (epoch 4), not the maximum (epoch 1); a NaN is never the best.
        ("val/loss", [2.0, 1.5, 1.7, 1.2, math.nan], 4),
    ],
)
# every 5: best.pt is written on its own; every 1: it is the latest checkpoint of its epoch
# (linked, not written twice), and must keep that epoch when later checkpoints replace latest.pt.
@pytest.mark.parametrize("every", [5, 1])
def test_best_is_the_best_epoch_in_the_metrics_direction(
    tmp_path, metric, curve, best_epoch, every
):
    mode = resolve(build_spec({"name": "s", "metric": metric})).mode  # as the trainable gets it
    assert mode == ("max" if metric == "val/top1" else "min")
    w = writer(tmp_path, epochs=5, every=every, metric=metric, mode=mode)
    name = metric.split("/")[1]
    history, kept = [], []
    for epoch, value in enumerate(curve, start=1):
        train(w, history, [metrics(epoch, **{name: value})])
        kept.append(best(tmp_path)["epoch"])
    assert best(tmp_path)["epoch"] == best_epoch
    assert best(tmp_path)["metric"] == curve[best_epoch - 1]
    assert best(tmp_path)["model"]["weight"].item() == best_epoch  # that epoch's model
    assert best(tmp_path)["sample"] == SAMPLE
    assert best(tmp_path)["precision"] == "bf16"  # scored in the precision it trained in
    assert kept == [1, 2, 2, 4, 4]  # saved whenever it improves, kept otherwise
    assert latest(tmp_path)["best_metric"] == curve[best_epoch - 1]


def test_better_follows_the_direction_and_ignores_non_finite_values():
    assert better(2.0, 1.0, "max") and not better(1.0, 2.0, "max")
    assert better(1.0, 2.0, "min") and not better(2.0, 1.0, "min")
    assert not better(1.0, 1.0, "max") and not better(1.0, 1.0, "min")  # ties keep the first
    assert better(5, None, "max") and better(5.0, None, "min")  # the first value is the best
    for bad in (math.nan, math.inf, -math.inf, None, "1.0"):
        assert not better(bad, None, "max") and not better(bad, 0.0, "min")


def test_saved_state_loads_back_from_a_location(tmp_path):
    path = Location.of(tmp_path) / "x" / "state.pt"
    save_state({"epoch": 2, "model": {"w": torch.ones(2)}}, path)
    loaded = load_state(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("metric", "mode"),
    [("val/top1", "max"), ("val/top5", "max"), ("val/loss", "min"), ("train/loss", "min")],
)
def test_the_direction_follows_the_metric(metric, mode):
    assert resolve(build_spec({"name": "s", "metric": metric})).mode == mode


def test_the_seed_repeats_of_a_configuration_share_its_group():
    def group(**overrides):
        return trial_keys("t", flatten(quick_config(**overrides)), {}, study="s")["group"]

    base = group()
    assert group(seed=1) == base  # a repeat
    # Where and how it runs is not what is trained.
    assert group(threads=1, data__dir="/elsewhere", data__download=False) == base
    assert group(optim__lr=0.01) != base and group(model__dropout=0.1) != base
