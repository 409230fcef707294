"""Population-based training's pieces that run in the driver and the trial processes: explored
values kept inside the spec's ranges, and the pointer a donor reports read back by a recipient."""

from ray.tune.experiment import Trial

from cifartune.config.resolved import resolve
from cifartune.config.validation import build_spec
from cifartune.study.pbt import EpochPBT, pointed, pointer, within_bounds


def test_explored_values_stay_inside_the_specs_ranges_and_integers_stay_whole():
    bounds = {"optim.lr": (0.001, 0.2, False), "data.cutout_size": (0, 16, True)}
    config = {"optim.lr": 0.24, "data.cutout_size": 19.2, "model.dropout": 0.3}
    assert within_bounds(config, bounds) == {
        "optim.lr": 0.2, "data.cutout_size": 16, "model.dropout": 0.3,
    }  # fmt: skip
    config = {"optim.lr": 0.0008, "data.cutout_size": 7.6}
    assert within_bounds(config, bounds) == {"optim.lr": 0.001, "data.cutout_size": 8}


def test_a_donors_pointer_reads_back_as_its_trial_and_epoch():
    with pointer("abc_00002", 4) as checkpoint:
        assert pointed(checkpoint) == ("abc_00002", 4)
    assert pointed(None) is None


class Controller:
    """What EpochPBT asks of Ray's TuneController: its trials, and pausing one."""

    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return [t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]

    def pause_trial(self, trial, should_checkpoint=True):
        trial.status = Trial.PAUSED

    def _schedule_trial_save(self, trial, result=None):
        return trial.checkpoint


def population(size, next_barrier=None):
    spec = build_spec({
        "name": "p", "base": {"epochs": 6}, "search": {"algorithm": "random", "samples": size},
        "scheduler": {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5,
                      "mutations": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.2}}},
    })  # fmt: skip
    pbt = EpochPBT(resolve(spec))
    pbt.set_search_properties("val/top1", "max")
    if next_barrier is not None:
        pbt.resume_at(next_barrier)
    trials = [Trial("__fake", config={"optim.lr": 0.01 * (i + 1)}, stub=True) for i in range(size)]
    controller = Controller(trials)
    for trial in trials:
        pbt.on_trial_add(controller, trial)
        trial.status = Trial.RUNNING
    return pbt, controller, trials


def test_a_restored_population_waits_at_its_open_barrier_and_passes_those_it_met():
    # Restored with its first barrier (2) passed and the second (4) open: a member resumed at 2
    # reports it again and goes on; one at 4 waits there for the others.
    pbt, controller, (a, b, c) = population(3, next_barrier=4)
    assert pbt.on_trial_result(controller, a, {"epoch": 2, "val/top1": 50.0}) == "CONTINUE"
    assert pbt.on_trial_result(controller, b, {"epoch": 4, "val/top1": 40.0}) == "PAUSE"
    assert pbt._next_perturbation_sync == 4
    pbt.resume_at(None)  # every barrier passed: none is waited at
    assert pbt.on_trial_result(controller, c, {"epoch": 4, "val/top1": 40.0}) == "CONTINUE"


def test_members_waiting_at_a_barrier_the_last_member_never_reaches_meet_there():
    # Two members wait at epoch 2; the third, the last on its way, fails: nothing will report
    # at the barrier again. The waiting members meet there and run on instead of waiting forever.
    pbt, controller, (a, b, straggler) = population(3)
    for trial, value in ((a, 50.0), (b, 40.0)):
        assert pbt.on_trial_result(controller, trial, {"epoch": 2, "val/top1": value}) == "PAUSE"
        trial.status = Trial.PAUSED
    straggler.status = Trial.ERROR
    assert pbt.choose_trial_to_run(controller) in (a, b)
    assert pbt._next_perturbation_sync == 4  # the barrier at 2 was met
