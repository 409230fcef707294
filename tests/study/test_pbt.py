"""Population-based training's pieces that run in the driver and the trial processes: explored
values kept inside the spec's ranges, and the pointer a donor reports read back by a recipient."""

from cifartune.study.pbt import pointed, pointer, within_bounds


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
