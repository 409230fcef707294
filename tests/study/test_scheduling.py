"""The scheduler a spec builds (``cifartune.study.search.scheduler``), fed results by hand: no Ray
runtime. ASHA must count a trial's progress in our `epoch`, which goes on across a resume from
the trial's own checkpoint, not in Ray's `training_iteration`, which starts again at 1 there."""

from types import SimpleNamespace

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from cifartune.config.resolved import resolve
from cifartune.config.validation import build_spec
from cifartune.study.search import scheduler
from cifartune.study.trainable import _ray_safe

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def asha(**fields):
    spec = build_spec(
        {
            "name": "s",
            "base": {"epochs": 4},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2, **fields},
        }
    )
    resolved = resolve(spec)
    sched = scheduler(resolved)
    # What the Tuner does with the TuneConfig's metric and mode.
    assert sched.set_search_properties(spec.metric, resolved.mode)
    return sched


def add(sched, name):
    trial = SimpleNamespace(trial_id=name)  # all ASHA reads of a trial
    sched.on_trial_add(None, trial)
    return trial


def result(epoch, top1, iteration):
    return {"epoch": epoch, "val/top1": top1, "training_iteration": iteration}


def test_asha_rungs_follow_the_epoch_not_rays_iteration_count():
    # Rungs at epochs 1, 2 and 4 (grace 1, factor 2, 4 epochs).
    sched = asha()
    good, resumed = add(sched, "good"), add(sched, "resumed")
    assert sched.on_trial_result(None, good, result(1, 60.0, 1)) == CONTINUE
    assert sched.on_trial_result(None, resumed, result(1, 70.0, 1)) == CONTINUE
    assert sched.on_trial_result(None, good, result(2, 60.0, 2)) == CONTINUE
    # `resumed` restarted from its checkpoint of epoch 1: its epoch 2 is Ray's iteration 1.
    # At the epoch-2 rung it is below `good`: stopped. (Counted in iterations it would still
    # be at rung 1, which it has passed already, and go on.)
    assert sched.on_trial_result(None, resumed, result(2, 10.0, 1)) == STOP


def test_asha_stops_a_resumed_trial_at_its_last_epoch():
    sched = asha()
    trial = add(sched, "t")
    assert sched.on_trial_result(None, trial, result(1, 50.0, 1)) == CONTINUE
    # Resumed at epoch 3: epoch 4 (max_t, the trial's epochs) is only iteration 1.
    assert sched.on_trial_result(None, trial, result(4, 90.0, 1)) == STOP
    # And a long Ray iteration count alone does not end a trial before its epochs.
    other = add(sched, "u")
    assert sched.on_trial_result(None, other, result(1, 95.0, 9)) == CONTINUE


def test_asha_max_epochs_caps_the_budget_and_fifo_stops_nothing():
    sched = asha(max_epochs=2)
    trial = add(sched, "t")
    assert sched.on_trial_result(None, trial, result(2, 50.0, 2)) == STOP
    fifo = scheduler(resolve(build_spec({"name": "s", "scheduler": {"name": "fifo"}})))
    assert isinstance(fifo, FIFOScheduler)
    assert fifo.on_trial_result(None, trial, result(2, 0.0, 2)) == CONTINUE


def test_a_non_finite_metric_reaches_ray_as_the_worst_value():
    # A diverged trial's NaN loss: ASHA ranks it last, Optuna records a bad trial.
    reported = _ray_safe({"epoch": 3, "val/loss": float("nan"), "lr": 0.1}, "val/loss", "min")
    assert reported == {"epoch": 3, "val/loss": float("inf"), "lr": 0.1}
    assert _ray_safe({"val/top1": float("nan")}, "val/top1", "max") == {"val/top1": float("-inf")}
    assert _ray_safe({"val/top1": 12.5}, "val/top1", "max") == {"val/top1": 12.5}
