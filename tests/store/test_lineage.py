"""Population-based training in a study's files, without Ray or training: a donor keeps its
state at the epochs other trials may take it, a recipient takes it (its later rows withdrawn, the
exploit in its lineage), and the lineage gives back the chain of trials that trained a model."""

import pandas as pd
import torch

from cifartune.config.base import flatten
from cifartune.storage import Location
from cifartune.store.checkpoints import load_state
from cifartune.store.columns import trial_keys
from cifartune.store.epochs import EpochReader, trial_epochs_dir
from cifartune.store.layout import LATEST, checkpoint_dir
from cifartune.store.lineage import (
    final_values,
    lineage_schedule,
    read_lineage,
    spans,
    trial_exploits,
)
from cifartune.store.trial_writer import TrialWriter, kept_checkpoint

from ..support import quick_config


def member(tmp_path, trial_id, lr, keep=(2, 4)):
    flat = flatten(quick_config(epochs=6, optim__lr=lr))
    sample = {"optim.lr": lr}
    return TrialWriter(
        Location.of(tmp_path), trial_id, sample=sample, flat_config=flat,
        keys=trial_keys(trial_id, flat, sample, study="s"), metric="val/top1", mode="max",
        every=3, extras={"node_id": "n1", "pid": 1}, keep=keep,
    )  # fmt: skip


def train(writer, first, last, lr):
    """Epochs first..last whose model is a tensor holding the epoch and the trainer's lr."""
    for epoch in range(first, last + 1):
        row = {"epoch": epoch, "lr": lr, "val/top1": 10.0 + epoch, "val/loss": 2.0}
        config = quick_config(epochs=6, optim__lr=lr).model_dump()
        state = {"epoch": epoch, "history": [row], "config": config,
                 "model": {"weight": torch.tensor([epoch, lr], dtype=torch.float64)}}  # fmt: skip
        writer.record(row, lambda state=state: state)


def kept(tmp_path, trial_id):
    folder = checkpoint_dir(Location.of(tmp_path), trial_id)
    return sorted(f.name for f in folder.files(".pt") if f.name.startswith("epoch-"))


def test_a_donor_keeps_its_state_at_the_epochs_others_may_take_it_the_two_newest(tmp_path):
    with member(tmp_path, "donor", 0.1, keep=(1, 2, 3)) as donor:
        train(donor, 1, 5, 0.1)
    assert kept(tmp_path, "donor") == [kept_checkpoint(2), kept_checkpoint(3)]
    state = load_state(checkpoint_dir(Location.of(tmp_path), "donor") / kept_checkpoint(3))
    assert state["model"]["weight"].tolist() == [3.0, 0.1]  # epoch 3's, though it went on


def test_a_recipient_takes_the_donors_state_and_records_the_exploit(tmp_path):
    with member(tmp_path, "donor", 0.1) as donor:
        train(donor, 1, 4, 0.1)
    with member(tmp_path, "taker", 0.02) as taker:
        train(taker, 1, 3, 0.02)  # epoch 3 ran past the barrier (a resumed trial's)
    with member(tmp_path, "taker", 0.03) as taker:  # the explored config
        state = taker.exploit("donor", 2)
        assert taker.exploited("donor", 2) and not taker.exploited("donor", 4)
    assert state["model"]["weight"].tolist() == [2.0, 0.1]  # the donor's, at epoch 2
    latest = load_state(checkpoint_dir(Location.of(tmp_path), "taker") / LATEST)
    assert latest["model"]["weight"].tolist() == [2.0, 0.1]
    rows = pd.DataFrame(EpochReader().rows(trial_epochs_dir(Location.of(tmp_path), "taker")))
    assert rows["epoch"].tolist() == [1, 2]  # epoch 3 withdrawn: it is trained again
    (exploit,) = trial_exploits(Location.of(tmp_path), "taker")
    assert (exploit["epoch"], exploit["donor_trial_id"], exploit["donor_epoch"]) == (2, "donor", 2)
    assert (exploit["from/optim.lr"], exploit["to/optim.lr"]) == (0.02, 0.03)
    assert read_lineage(Location.of(tmp_path))["trial_id"].tolist() == ["taker"]


def _epochs(trials, last=6):
    return pd.DataFrame(
        [{"trial_id": t, "epoch": e, "val/top1": v + e} for t, v in trials.items()
         for e in range(1, last + 1)]
    )  # fmt: skip


def test_a_models_chain_follows_its_exploits_back_to_the_first_epoch():
    # c took b's state after epoch 4, b took a's after epoch 2; a never exploited.
    lineage = pd.DataFrame(
        {"trial_id": ["b", "c"], "epoch": [2, 4], "donor_trial_id": ["a", "b"],
         "donor_epoch": [2, 4]}
    )  # fmt: skip
    epochs = _epochs({"a": 0, "b": 1, "c": 2})
    chain = lineage_schedule(epochs, lineage, "c")
    assert chain == [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]
    assert spans(chain) == [(1, 2, "a"), (3, 4, "b"), (5, 6, "c")]
    assert lineage_schedule(epochs, lineage, "b", until=3) == [(1, "a"), (2, "a"), (3, "b")]
    assert lineage_schedule(epochs, lineage.iloc[:0], "c") == [(e, "c") for e in range(1, 7)]


def test_the_best_final_model_is_ranked_by_its_last_epoch_in_the_metrics_direction():
    epochs = _epochs({"a": 0, "b": 5})
    epochs.loc[(epochs["trial_id"] == "b") & (epochs["epoch"] == 6), "val/top1"] = 1.0
    assert list(final_values(epochs, "val/top1", "max").index) == ["a", "b"]
    assert list(final_values(epochs, "val/top1", "min").index) == ["b", "a"]
