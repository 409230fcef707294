"""An epoch's files written while the next epoch trains (``trial_store``): only where the trial
surely goes on, the checkpoint before the row as in the foreground, one write in flight, the
trial's end waiting for it, and its errors raised, not lost. The background write is held on a
gate, so what is on disk when ``record`` returns shows where it was written, whatever the
machine's speed."""

import threading

import pytest

from cifartune.storage import Location
from cifartune.store import trial_writer
from cifartune.store.epochs import epoch_files, trial_epochs_dir

from .test_trial_writer import latest, metrics, rows, train, writer


@pytest.fixture
def gate(monkeypatch):
    """save_state off the main thread waits until the gate opens (or fails, when told)."""
    gate = threading.Event()
    gate.error = None
    save = trial_writer.save_state

    def gated(state, path):
        if threading.current_thread() is not threading.main_thread():
            assert gate.wait(30), "the test never opened the gate"
            if gate.error is not None:
                raise gate.error
        save(state, path)

    monkeypatch.setattr(trial_writer, "save_state", gated)
    return gate


def test_an_epoch_the_trial_goes_on_after_is_written_while_the_next_trains(tmp_path, gate):
    with writer(tmp_path, epochs=3, stops_at=set()) as w:
        history = []
        train(w, history, [metrics(1)])
        # Held in the background, checkpoint first: no row may appear before its checkpoint.
        assert latest(tmp_path) is None
        assert not epoch_files(trial_epochs_dir(Location.of(tmp_path), "t_1"))
        gate.set()
        train(w, history, [metrics(2)])  # waits for epoch 1's files first
        assert latest(tmp_path)["epoch"] in (1, 2)
        assert rows(tmp_path)["epoch"].tolist()[0] == 1
        train(w, history, [metrics(3)])  # the last epoch: written before record returns
        assert latest(tmp_path)["epoch"] == 3
    assert rows(tmp_path)["epoch"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("stops_at", [None, {1}], ids=["any epoch", "a rung at 1"])
def test_an_epoch_the_scheduler_may_stop_at_is_on_disk_when_record_returns(
    tmp_path, gate, stops_at
):
    with writer(tmp_path, epochs=3, stops_at=stops_at) as w:
        train(w, [], [metrics(1)])
        assert latest(tmp_path)["epoch"] == 1


def test_a_resumed_trials_first_epoch_is_on_disk_when_record_returns(tmp_path, gate):
    gate.set()
    history = []
    with writer(tmp_path, epochs=4, stops_at=set()) as w:
        train(w, history, [metrics(1)])
    gate.clear()
    with writer(tmp_path, epochs=4, stops_at=set()) as resumed:
        assert resumed.resume()["epoch"] == 1
        train(resumed, history, [metrics(2)])
        assert latest(tmp_path)["epoch"] == 2
        gate.set()


def test_leaving_the_writer_waits_for_the_checkpoint_in_flight(tmp_path, gate):
    opener = threading.Timer(0.2, gate.set)
    with writer(tmp_path, epochs=3, stops_at=set()) as w:
        train(w, [], [metrics(1)])
        opener.start()
    assert latest(tmp_path)["epoch"] == 1


def test_a_failed_background_write_fails_the_next_epoch_and_keeps_what_was_written(tmp_path, gate):
    gate.error = OSError(28, "No space left on device")
    gate.set()
    with (
        pytest.raises(OSError, match="No space left"),
        writer(tmp_path, epochs=4, stops_at={1}) as w,
    ):
        history = []
        train(w, history, [metrics(1)])  # a rung: written in the foreground
        train(w, history, [metrics(2)])  # in the background, where the disk is full
        train(w, history, [metrics(3)])
    assert rows(tmp_path)["epoch"].tolist() == [1]
    assert latest(tmp_path)["epoch"] == 1
